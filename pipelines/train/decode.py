"""Decode one clip's bytes to frames at a batch's geometry with PyAV (in-process, no ffmpeg subprocess).

Frames are scaled by libswscale (inside PyAV) to cover the target size and
center-cropped, so the aspect-ratio bucket never stretches content. Output
stays uint8 (T, H, W, 3): four times less to move between processes than
float; the training loop converts on its device.
"""

from __future__ import annotations

import io

import numpy as np

from pyratok.core.decoding import stream_ends_early
from pyratok.pipelines.train.buckets import Geometry


class ClipDecodeError(ValueError):
    """A clip that cannot become a training tensor; ``reason`` is its skip-counter name."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def cover_size(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int]:
    """Smallest size with the source's aspect ratio that covers the target (both sides >= target)."""
    scale = max(dst_w / src_w, dst_h / src_h)
    return max(dst_w, int(np.ceil(src_w * scale - 1e-6))), max(dst_h, int(np.ceil(src_h * scale - 1e-6)))


def decode_clip(data: bytes, geometry: Geometry, *, start: int = 0, stride: int = 1, key: str = "?",
                listed_frames: int | None = None) -> np.ndarray:
    """``geometry.frames`` frames from frame ``start`` every ``stride`` -> uint8 (T, H, W, 3).

    ``listed_frames`` (the clip's frame count from its metadata) tells a clip that is too short
    (``too_short``) from one whose stream ends before what it lists (``corrupt``).
    """
    import av

    wanted = [start + i * stride for i in range(geometry.frames)]
    last = wanted[-1]
    out = np.empty((geometry.frames, geometry.height, geometry.width, 3), dtype=np.uint8)
    got, index = 0, -1
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ClipDecodeError("no_video_stream", f"{key}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index > last:
                    break
                if index != wanted[got]:
                    continue
                width, height = cover_size(frame.width, frame.height, geometry.width, geometry.height)
                interpolation = "AREA" if width < frame.width else "BICUBIC"
                rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation=interpolation)
                array = rgb.to_ndarray()
                top = (height - geometry.height) // 2
                left = (width - geometry.width) // 2
                out[got] = array[top : top + geometry.height, left : left + geometry.width]
                got += 1
                if got == geometry.frames:
                    break
    except ClipDecodeError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, OSError) as exc:
        raise ClipDecodeError("corrupt", f"{key}: cannot decode video: {exc}") from exc
    if got < geometry.frames and stream_ends_early(index + 1, listed_frames):
        raise ClipDecodeError(
            "corrupt", f"{key}: the stream ends after {index + 1} frames of the {listed_frames} its metadata lists"
        )
    if got < geometry.frames:
        raise ClipDecodeError(
            "too_short", f"{key}: decoded {got} of {geometry.frames} frames (start {start}, stride {stride})"
        )
    return out
