"""Write one shard: produce each clip's mp4, pack the samples in key order, commit.

The tar is written under a temporary name and committed in one step
(``Storage.atomic_write``: rename locally, completed upload on S3); the stats
JSON beside it is written after it and is the commit marker a rerun checks. A
clip that fails here (cut error, ffmpeg hang) becomes a reject recorded in the
stats, so it stays accounted for when the shard is later skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from pyratok.core.dataset import ClipMetadata, shard_stats_uri, shard_uri
from pyratok.core.storage import Storage, StorageError, basename, is_s3
from pyratok.pipelines.ingest import reasons
from pyratok.pipelines.ingest.clip import ClipPlan, CutError, make_clip
from pyratok.pipelines.ingest.config import IngestConfig
from pyratok.pipelines.ingest.integrity import check_decode, check_index
from pyratok.pipelines.ingest.probe import ProbeError, VideoInfo, count_decoded_frames, probe
from pyratok.pipelines.ingest.read_inputs import reject_record
from pyratok.pipelines.ingest.reasons import RejectError, Rejection
from pyratok.pipelines.ingest.shard_plan import FORMAT_VERSION, ShardSpec
from pyratok.pipelines.ingest.video_access import VideoAccess

TAR_MTIME = 946684800
"""Fixed member mtime (2000-01-01) so the same clips give a byte-identical tar."""

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``map`` over a thread pool, results in input order, at most ``2 * threads`` in flight (bounded disk)."""
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        iterator = iter(items)
        for item in iterator:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass
class ProducedClip:
    path: Path
    temporary: bool
    info: VideoInfo
    """Probe of the stored bytes (the source's probe for whole-file copies)."""


@dataclass(frozen=True)
class ShardWriter:
    """Picklable context of a shard task (Ray Data ``map`` UDF)."""

    storage: Storage
    cfg: IngestConfig
    root: str

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        spec = ShardSpec.from_item(item)
        try:
            stats = self.write(spec)
        except StorageError as exc:  # reported to the driver by value: Ray Data would lose the type
            return {"name": spec.name, "stats": "", "error": str(exc)}
        return {"name": spec.name, "stats": json.dumps(stats, sort_keys=True), "error": ""}

    def write(self, spec: ShardSpec) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix=f"pyratok-{spec.name}-") as tmp:
            work = Path(tmp)
            clips: list[dict[str, Any]] = []
            rejects: list[dict[str, Any]] = []
            with self.storage.atomic_write(shard_uri(self.root, spec.name)) as tar_path:
                import webdataset as wds

                with open(tar_path, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=TAR_MTIME) as tar:
                    produce = lambda clip: self._produce(clip, work)  # noqa: E731
                    for clip, produced in zip(spec.clips, ordered_map(produce, spec.clips, self.cfg.execution.cut_threads)):
                        if isinstance(produced, Rejection):
                            rejects.append(reject_record(clip, produced))
                            continue
                        clips.append(self._add(tar, spec.name, clip, produced))
                tar_bytes = os.path.getsize(tar_path)
        stats = shard_stats(spec, clips, rejects, tar_bytes)
        # Written last: a shard counts as committed only once its stats exist (and name its digest).
        self.storage.write_json(shard_stats_uri(self.root, spec.name), stats)
        return stats

    # -- one clip ----------------------------------------------------------
    def _produce(self, clip: dict[str, Any], work: Path) -> ProducedClip | Rejection:
        info = VideoInfo(**json.loads(clip["info"]))
        plan = ClipPlan(**json.loads(clip["plan"]))
        uri = clip["video"]
        execution = self.cfg.execution
        access = VideoAccess(self.storage, execution.presign_expiry_s)
        dest = work / f"{clip['key']}.mp4"
        try:
            if plan.mode == "whole":
                produced = ProducedClip(Path(uri), False, info)
                if is_s3(uri):
                    self.storage.download(uri, dest)
                    produced = ProducedClip(dest, True, info)
                return self._verified(produced, uri)
            target = access.target(uri)
            try:
                make_clip(target, dest, plan, info, self.cfg.cut, timeout_s=execution.cut_timeout_s,
                          network_timeout_s=execution.network_timeout_s)  # fmt: skip
            except CutError as exc:
                return Rejection(exc.reason, access.scrub(exc.detail, uri, target))
            try:
                out = probe(str(dest), timeout_s=execution.probe_timeout_s)
                if plan.mode == "copy":
                    frames = count_decoded_frames(str(dest), timeout_s=execution.cut_timeout_s)
                    out = replace(out, num_frames=frames, duration_s=round(frames / out.fps, 6) if out.fps else out.duration_s)
            except ProbeError as exc:
                return Rejection(reasons.CUT_FAILED, f"{plan.mode} output is unreadable: {exc.detail}")
            if not out.num_frames:
                return Rejection(reasons.CUT_FAILED, f"{plan.mode} output has no decodable frame")
            return self._verified(ProducedClip(dest, True, out), uri, planned_s=plan.duration_s)
        except FileNotFoundError:
            return Rejection(reasons.MISSING_FILE, f"{uri} disappeared after it was probed")

    def _verified(self, produced: ProducedClip, uri: str, *, planned_s: float | None = None) -> ProducedClip | Rejection:
        """The exact bytes that go into the shard decode at both ends.

        A whole file's index was checked in the probe stage. Cut or remuxed output (``planned_s``:
        how long the plan says it lasts) gets its own index checked, and must last that long: a remux
        or cut of a source that lost its tail comes out shorter, not broken.
        """
        checks, info = self.cfg.integrity, produced.info
        path = str(produced.path)
        try:
            if planned_s is not None:
                if checks.check_index:
                    check_index(lambda offset, length: self.storage.read_range(path, offset, length),
                                os.path.getsize(path), uri)  # fmt: skip
                period = 1.0 / info.fps if info.fps > 0 else 0.04
                if planned_s - info.duration_s > 2 * period + self.cfg.cut.window_end_tolerance_s:
                    raise RejectError(reasons.TRUNCATED, f"{uri}: the stored clip lasts {info.duration_s:.3f} s of the "
                                                         f"{planned_s:.3f} s the source's header promises")  # fmt: skip
            if checks.decode_ends:
                check_decode(path, duration_s=info.duration_s, fps=info.fps, head_frames=checks.head_frames, name=uri)
        except RejectError as exc:
            if produced.temporary:
                produced.path.unlink(missing_ok=True)
            return exc.rejection
        return produced

    def _add(self, tar, shard: str, clip: dict[str, Any], produced: ProducedClip) -> dict[str, Any]:
        data = produced.path.read_bytes()
        if produced.temporary:
            produced.path.unlink(missing_ok=True)
        plan = ClipPlan(**json.loads(clip["plan"]))
        info = produced.info
        # A cut clip's true end is where its frames end (keyframe/frame rounding), not the asked-for window end.
        cut = plan.mode in ("copy", "reencode")
        clip_end = round(plan.clip_start_s + info.duration_s, 6) if cut else plan.clip_end_s
        meta = ClipMetadata(
            key=clip["key"],
            source=clip["source"],
            source_id=clip["source_id"],
            width=info.width,
            height=info.height,
            fps=info.fps,
            num_frames=info.num_frames,
            duration_s=info.duration_s,
            codec=info.codec,
            clip_start_s=plan.clip_start_s,
            clip_end_s=clip_end,
            caption=clip["caption"],
            captions=json.loads(clip["captions"]),
            scores=json.loads(clip["scores"]),
            tags=json.loads(clip["tags"]),
            caption_issues=[i for i in clip["caption_issues"].split(",") if i],
            cut=plan.mode,
            source_file=basename(clip["video"]),
            split=clip.get("split", "train"),
        )
        meta_json = json.dumps(meta.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        tar.write({"__key__": clip["key"], "mp4": data, "json": meta_json.encode("utf-8"), "txt": clip["caption"].encode("utf-8")})
        return {
            "key": clip["key"],
            "shard": shard,
            "source": clip["source"],
            "source_id": clip["source_id"],
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "frames": info.num_frames,
            "duration": info.duration_s,
            "codec": info.codec,
            "sha256": hashlib.sha256(data).hexdigest(),
            "split": meta.split,
            "bytes": len(data),
            "clip_start_s": plan.clip_start_s,
            "clip_end_s": clip_end,
            "cut": plan.mode,
            "video": clip["video"],
            "metadata": clip["metadata"],
            "row": int(clip["row"]),
            "input": int(clip["input"]),
        }


def shard_stats(spec: ShardSpec, clips: list[dict[str, Any]], rejects: list[dict[str, Any]], tar_bytes: int) -> dict[str, Any]:
    durations = [c["duration"] for c in clips]
    return {
        "shard": spec.name,
        "digest": spec.digest,
        "format": FORMAT_VERSION,
        "samples": len(clips),
        "rejected": len(rejects),
        "tar_bytes": tar_bytes,
        "video_bytes": sum(c["bytes"] for c in clips),
        "frames": sum(c["frames"] for c in clips),
        "duration_s": {
            "total": round(sum(durations), 6),
            "min": min(durations, default=0.0),
            "max": max(durations, default=0.0),
            "mean": round(statistics.fmean(durations), 6) if durations else 0.0,
        },
        "cut_modes": dict(sorted(Counter(c["cut"] for c in clips).items())),
        "codecs": dict(sorted(Counter(c["codec"] for c in clips).items())),
        "resolutions": dict(sorted(Counter(f"{c['width']}x{c['height']}" for c in clips).items())),
        "clips": clips,
        "rejects": rejects,
    }
