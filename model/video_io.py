"""Video in/out for the model CLI: decode with PyAV, fit to the model's size constraints in torch, encode mp4."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from pyratok.model.frame_store import FrameStore


@dataclass
class LoadedVideo:
    video: torch.Tensor
    """(1, 3, T, H, W) float in [-1, 1]."""
    fps: float
    source_frames: int
    source_size: tuple[int, int]
    """(H, W) as decoded."""


def iter_frames(path: str | os.PathLike, max_frames: int | None = None) -> Iterator[tuple[np.ndarray, float]]:
    """(H, W, 3) uint8 RGB frames one at a time, each with the stream's fps (never the whole clip in memory)."""
    import av

    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise ValueError(f"{path}: cannot open as a video ({exc})") from exc
    with container:
        if not container.streams.video:
            raise ValueError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 24)
        count = 0
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24"), fps
                count += 1
                if max_frames is not None and count >= max_frames:
                    break
        except av.error.FFmpegError as exc:
            if not count:
                raise ValueError(f"{path}: cannot decode video frames ({exc})") from exc
    if not count:
        raise ValueError(f"{path}: contains no decodable frames")


def decode_frames(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """(T, H, W, 3) uint8 RGB frames and the stream's fps."""
    frames, fps = [], 24.0
    for frame, fps in iter_frames(path, max_frames):
        frames.append(frame)
    return np.stack(frames), fps


def fitted_size(height: int, width: int, spatial_multiple: int) -> tuple[int, int]:
    return (max(spatial_multiple, height // spatial_multiple * spatial_multiple),
            max(spatial_multiple, width // spatial_multiple * spatial_multiple))


def fit_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One uint8 (H, W, 3) frame resized (bilinear, antialiased, as ``fit_video``) to ``size``, still uint8."""
    if tuple(frame.shape[:2]) == tuple(size):
        return frame
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


@dataclass
class StoredVideo:
    store: "FrameStore"
    fps: float
    source_frames: int
    source_size: tuple[int, int]


def decode_to_store(path: str | os.PathLike, directory: str | os.PathLike, *, spatial_multiple: int,
                    temporal_multiple: int, max_frames: int | None = None) -> StoredVideo:
    """Decode ``path`` frame by frame into a disk-backed store fitted to the model (1+4k frames, sides multiples)."""
    from pyratok.model.frame_store import FrameStore

    raw = Path(directory) / "input.rgb"
    count, fps, size, source_size = 0, 24.0, None, None
    with open(raw, "wb") as f:
        for frame, fps in iter_frames(path, max_frames):
            if size is None:
                source_size = tuple(frame.shape[:2])
                size = fitted_size(*source_size, spatial_multiple)
            f.write(np.ascontiguousarray(fit_frame(frame, size)).tobytes())
            count += 1
    frames = 1 + temporal_multiple * ((count - 1) // temporal_multiple)
    return StoredVideo(FrameStore(raw, frames, *size), fps, count, source_size)


def fit_video(frames: np.ndarray, *, spatial_multiple: int, temporal_multiple: int,
              size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (1, 3, T', H', W') in [-1, 1] with T' = 1 + k*temporal_multiple (leading frames kept)
    and H', W' multiples of ``spatial_multiple`` (``size`` if given, else the input size rounded down)."""
    t = 1 + temporal_multiple * ((frames.shape[0] - 1) // temporal_multiple)
    video = torch.from_numpy(frames[:t]).permute(3, 0, 1, 2).float().div(127.5).sub(1)[None]
    h, w = size or frames.shape[1:3]
    h = max(spatial_multiple, h // spatial_multiple * spatial_multiple)
    w = max(spatial_multiple, w // spatial_multiple * spatial_multiple)
    if (h, w) != tuple(frames.shape[1:3]):
        flat = video[0].transpose(0, 1)  # (T, 3, H, W)
        flat = F.interpolate(flat, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        video = flat.transpose(0, 1)[None].clamp(-1, 1)
    return video


def load_video(path: str | os.PathLike, *, spatial_multiple: int, temporal_multiple: int,
               max_frames: int | None = None, size: tuple[int, int] | None = None) -> LoadedVideo:
    frames, fps = decode_frames(path, max_frames)
    video = fit_video(frames, spatial_multiple=spatial_multiple, temporal_multiple=temporal_multiple, size=size)
    return LoadedVideo(video=video, fps=fps, source_frames=frames.shape[0], source_size=tuple(frames.shape[1:3]))


def write_video(path: str | os.PathLike, video: torch.Tensor, fps: float, *, crf: int = 18) -> None:
    """(3, T, H, W) in [-1, 1] -> H.264 mp4 (yuv420p)."""
    frames = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()
    write_frames(path, iter(frames), fps, height=frames.shape[1], width=frames.shape[2], crf=crf)


def write_frames(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float, *, height: int, width: int,
                 crf: int = 18) -> None:
    """uint8 (H, W, 3) frames, one at a time, -> H.264 mp4 (yuv420p)."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_side_by_side(path: str | os.PathLike, original: torch.Tensor, recon: torch.Tensor, fps: float = 8.0) -> None:
    """(3, T, H, W) each, in [-1, 1] or uint8 -> an mp4 of original | reconstruction at ``path`` (the
    shorter length of the two; padded to even sides, which yuv420p needs)."""

    def as_float(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().cpu()
        return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()

    length = min(original.shape[1], recon.shape[1])
    pair = torch.cat([as_float(original)[:, :length], as_float(recon)[:, :length]], dim=-1)
    pair = F.pad(pair, (0, pair.shape[-1] % 2, 0, pair.shape[-2] % 2), value=-1.0)
    write_video(path, pair, fps)


def side_by_side_mp4(original: torch.Tensor, recon: torch.Tensor, fps: float = 8.0) -> bytes:
    """:func:`write_side_by_side`'s mp4 as bytes."""
    with tempfile.TemporaryDirectory(prefix="pyratok-pair-") as tmp:
        path = os.path.join(tmp, "pair.mp4")
        write_side_by_side(path, original, recon, fps)
        with open(path, "rb") as fh:
            return fh.read()
