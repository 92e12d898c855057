"""The two per-row stages of the caption job: frame decoding (CPU tasks) and captioning (actor pool).

Rows that already failed pass through untouched, so every sample reaches the
driver exactly once with either a caption or a (stage, reason, detail).
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from pyratok.core.logging import get_logger
from pyratok.core.storage import Storage, StorageConfig
from pyratok.pipelines.caption.backends import VideoClip, backend_class
from pyratok.pipelines.caption.config import CaptionConfig, FrameSamplingConfig
from pyratok.pipelines.caption.frames import DecodeError, decode_frame_sample
from pyratok.pipelines.caption.models import local_model_dir
from pyratok.pipelines.caption.postprocess import Cleaned, Postprocessor
from pyratok.pipelines.caption.reader import shard_samples
from pyratok.pipelines.caption.vision import VisionSpec

log = get_logger(__name__)

OUTPUT_COLUMNS = (
    "shard", "key", "expected", "caption", "fields", "generated_tokens", "truncated", "frames",
    "stage", "error", "detail",
)  # fmt: skip


def shard_frames(task: dict, *, storage: Storage, frames: FrameSamplingConfig, spec: VisionSpec) -> Iterator[dict]:
    """Ray Data ``flat_map``: one shard task -> frame rows (read and decode in one CPU task, streamed)."""
    for row in shard_samples(task, storage=storage):
        yield decode_row(row, frames=frames, spec=spec)


def decode_row(row: dict, *, frames: FrameSamplingConfig, spec: VisionSpec) -> dict:
    """Sample row (video bytes) -> frame row (small uint8 frames as bytes + shape)."""
    out = {
        "shard": row["shard"], "key": row["key"], "expected": row["expected"],
        "frames": b"", "frame_shape": [0, 0, 0, 0], "sample_fps": 0.0,
        "stage": "read" if row["error"] else "", "error": row["error"], "detail": row["detail"],
    }  # fmt: skip
    if row["error"]:
        return out
    try:
        sample = decode_frame_sample(row["video"], frames, spec)
    except DecodeError as exc:
        out.update(stage="decode", error=exc.reason, detail=exc.detail)
        return out
    except Exception as exc:  # noqa: BLE001 - one bad clip must never kill the job; it goes to the ledger
        out.update(stage="decode", error="undecodable", detail=f"{type(exc).__name__}: {exc}")
        return out
    out.update(frames=sample.frames.tobytes(), frame_shape=list(sample.frames.shape), sample_fps=float(sample.sample_fps))
    return out


def _failed(row: dict, stage: str, error: str, detail: str, frames: int = 0) -> dict:
    return {
        "shard": row["shard"], "key": row["key"], "expected": int(row["expected"]), "caption": "", "fields": "{}",
        "generated_tokens": 0, "truncated": False, "frames": frames, "stage": stage, "error": error, "detail": detail,
    }  # fmt: skip


class CaptionWorker:
    """A stateful Ray Data actor: loads the backend's model once, captions batches of frame rows."""

    def __init__(self, *, caption: dict, backend: str, location: str, cache_dir: str, storage: dict):
        import json

        self._json = json
        cfg = CaptionConfig.model_validate(caption)
        started = time.perf_counter()
        model_dir = local_model_dir(Storage(StorageConfig.model_validate(storage)), location, cache_dir)
        self.backend = backend_class(backend)(model_dir=model_dir, cfg=cfg)
        self.post = Postprocessor(cfg.postprocess, cfg.prompt)
        log.info("caption actor ready (%s backend, %.1fs)", backend, time.perf_counter() - started)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        results: list[dict | None] = [None] * len(rows)
        todo: list[int] = []
        clips: list[VideoClip] = []
        for i, row in enumerate(rows):
            if row["error"]:
                results[i] = _failed(row, row["stage"] or "read", row["error"], row["detail"])
                continue
            shape = tuple(int(v) for v in row["frame_shape"])
            frames = np.frombuffer(row["frames"], dtype=np.uint8).reshape(shape).copy()  # writable for torch
            clips.append(VideoClip(key=row["key"], frames=frames, sample_fps=float(row["sample_fps"])))
            todo.append(i)
        for i, clip, outcome in zip(todo, clips, self._generate(clips)):
            results[i] = self._finish(rows[i], clip, outcome)
        return {col: [r[col] for r in results] for col in OUTPUT_COLUMNS}

    def _generate(self, clips: list[VideoClip]) -> list:
        """Generations (or exceptions) per clip; a failing batch is retried clip by clip to isolate the culprit."""
        if not clips:
            return []
        try:
            return list(self.backend.generate(clips))
        except Exception as exc:  # noqa: BLE001 - narrowed down below
            if len(clips) == 1:
                return [exc]
            log.warning("batch of %d clips failed (%s); retrying one by one", len(clips), exc)
        out = []
        for clip in clips:
            try:
                out.extend(self.backend.generate([clip]))
            except Exception as exc:  # noqa: BLE001 - this clip goes to the ledger, the job goes on
                out.append(exc)
        return out

    def _finish(self, row: dict, clip: VideoClip, outcome) -> dict:
        nframes = int(clip.frames.shape[0])
        if isinstance(outcome, Exception):
            return _failed(row, "caption", "model_error", f"{type(outcome).__name__}: {outcome}"[:2000], nframes)
        cleaned = self.post(outcome.text)
        if not isinstance(cleaned, Cleaned):
            failed = _failed(row, "postprocess", cleaned.reason, cleaned.detail[:2000], nframes)
            failed["generated_tokens"] = outcome.num_tokens
            return failed
        return {
            "shard": row["shard"], "key": row["key"], "expected": int(row["expected"]), "caption": cleaned.caption,
            "fields": self._json.dumps(cleaned.fields, ensure_ascii=False), "generated_tokens": outcome.num_tokens,
            "truncated": not outcome.stopped, "frames": nframes, "stage": "", "error": "", "detail": "",
        }  # fmt: skip
