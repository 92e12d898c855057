"""Frame sampling: which frames of a clip the captioner sees, decoded small with PyAV.

The plan follows qwen-vl-utils (``fps`` frames per second, clamped to
[min_frames, max_frames], rounded down to the temporal patch size, spread
evenly over the clip). Each chosen frame is scaled by libswscale straight to
the model's target size while decoding, so a 4K/8K clip never becomes a
full-resolution RGB array in Python.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyratok.core.decoding import stream_ends_early
from pyratok.pipelines.caption.config import FrameSamplingConfig
from pyratok.pipelines.caption.vision import VisionSpec, target_size


class DecodeError(RuntimeError):
    """A clip that cannot be sampled; ``reason`` is a ledger code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class FrameSample:
    frames: np.ndarray
    """(T, H, W, 3) uint8, H and W multiples of the vision factor."""
    indices: np.ndarray
    """Frame numbers (0-based, presentation order) of the sampled frames."""
    timestamps: np.ndarray
    """Seconds from the clip's first frame."""
    source_fps: float
    source_frames: int
    source_size: tuple[int, int]
    """(height, width) of the clip as displayed (rotation metadata applied)."""

    @property
    def sample_fps(self) -> float:
        """Effective sampling rate (qwen-vl-utils: frames taken / frames in clip * clip fps)."""
        return len(self.indices) / max(self.source_frames, 1) * self.source_fps


def plan_num_frames(total_frames: int, video_fps: float, cfg: FrameSamplingConfig, spec: VisionSpec) -> int:
    """How many frames to sample from a clip (a multiple of the temporal patch size when the clip allows)."""
    if total_frames <= 0:
        return 0
    factor = spec.temporal_patch_size
    min_frames = math.ceil(cfg.min_frames / factor) * factor
    max_frames = max(factor, math.floor(min(cfg.max_frames, total_frames) / factor) * factor)
    wanted = total_frames / video_fps * cfg.fps if video_fps > 0 else min_frames
    n = min(max(wanted, min_frames), max_frames, total_frames)
    n = math.floor(n / factor) * factor
    # A clip shorter than one temporal patch still gets its frames; patchify repeats the last one.
    return int(n) if n >= factor else min(total_frames, factor)


def plan_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """Evenly spread frame numbers, first and last frame included."""
    if num_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.round(np.linspace(0, total_frames - 1, num_frames)).astype(np.int64)


def _open(source: bytes | str | Path):
    import av

    return av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else str(source))


def decode_frame_sample(source: bytes | str | Path, cfg: FrameSamplingConfig, spec: VisionSpec) -> FrameSample:
    """Sample and decode a clip (bytes or a local path) into small frames at the model's target size."""
    import av

    try:
        container = _open(source)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DecodeError("undecodable", f"cannot open video: {exc}") from exc
    with container:
        if not container.streams.video:
            raise DecodeError("no_video_stream", "the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        height, width = stream.codec_context.height, stream.codec_context.width
        if not height or not width:
            raise DecodeError("undecodable", "video stream has no frame size")
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 0.0
        total = int(stream.frames or 0)
        if total <= 0:
            duration = (
                float(stream.duration * stream.time_base)
                if stream.duration
                else (container.duration or 0) / 1_000_000
            )
            total = int(round(duration * fps)) if fps > 0 else 0
        if total <= 0:
            raise DecodeError("undecodable", "cannot determine the number of frames")
        num = plan_num_frames(total, fps, cfg, spec)
        wanted = plan_indices(total, num)

        frames: list[np.ndarray] = []
        indices: list[int] = []
        times: list[float] = []
        first_time: float | None = None
        quarter_turns = 0
        wanted_list = wanted.tolist()
        cursor, index = 0, -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if first_time is None:
                    first_time = float(frame.time or 0.0)
                    # Phone clips carry a display rotation: the model must see them upright, as players do.
                    quarter_turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
                    if quarter_turns % 2:
                        height, width = width, height
                    out_h, out_w = target_size(height, width, num, spec, cfg)
                    coded_h, coded_w = (out_w, out_h) if quarter_turns % 2 else (out_h, out_w)
                while cursor < len(wanted_list) and wanted_list[cursor] == index:
                    rgb = frame.reformat(width=coded_w, height=coded_h, format="rgb24", interpolation="BICUBIC")
                    frames.append(np.ascontiguousarray(np.rot90(rgb.to_ndarray(), quarter_turns)))
                    indices.append(index)
                    times.append(float(frame.time or 0.0) - first_time)
                    cursor += 1
                if cursor >= len(wanted_list):
                    break
        except av.FFmpegError as exc:
            if not frames:
                raise DecodeError("undecodable", f"decoding failed: {exc}") from exc
            # A damaged clip is not captioned from the part that decoded: it is reported, by key.
            raise DecodeError("corrupt", f"decoding failed after frame {index} of {total}: {exc}") from exc
        if not frames:
            raise DecodeError("undecodable", "no frame could be decoded")
        if cursor < len(wanted_list) and stream_ends_early(index + 1, total):
            raise DecodeError("corrupt", f"the stream ends after {index + 1} frames of the {total} its header lists")
    return FrameSample(
        frames=np.stack(frames),
        indices=np.asarray(indices, dtype=np.int64),
        timestamps=np.asarray(times, dtype=np.float64),
        source_fps=fps,
        source_frames=total,
        source_size=(height, width),
    )
