"""Video in/out for the model CLI: decode with PyAV, fit to the model's size constraints in torch, encode mp4."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class LoadedVideo:
    video: torch.Tensor
    """(1, 3, T, H, W) float in [-1, 1]."""
    fps: float
    source_frames: int
    source_size: tuple[int, int]
    """(H, W) as decoded."""


def decode_frames(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """(T, H, W, 3) uint8 RGB frames and the stream's fps."""
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
        frames = []
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except av.error.FFmpegError as exc:
            if not frames:
                raise ValueError(f"{path}: cannot decode video frames ({exc})") from exc
    if not frames:
        raise ValueError(f"{path}: contains no decodable frames")
    return np.stack(frames), fps


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
    import av

    frames = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
