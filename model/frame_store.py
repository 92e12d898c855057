"""Clip frames on local disk (raw uint8 RGB), written and read by crop, so no 4K/8K clip is ever whole in memory.

Tokenizing and reconstructing go tile by tile, every tile over all of its frames (that keeps one
tile's causal cache alive, not a whole frame's). The input is decoded once, frame by frame, into a
store; each tile reads its crop back; decoded tiles write theirs into an output store, which the
mp4 writer then streams frame by frame. Every access is a short-lived memory map, so only the crop
at hand is resident (the rest is the OS page cache, not this process's memory).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


class FrameStore:
    def __init__(self, path: str | os.PathLike, frames: int, height: int, width: int):
        self.path = Path(path)
        self.frames, self.height, self.width = frames, height, width
        # An existing file (frames appended by a decoder) is cut to exactly these frames; else a new sparse file.
        with open(self.path, "r+b" if self.path.exists() else "wb") as f:
            f.truncate(self.nbytes)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.frames, self.height, self.width, 3)

    @property
    def nbytes(self) -> int:
        return self.frames * self.height * self.width * 3

    def _map(self, mode: str) -> np.memmap:
        return np.memmap(self.path, dtype=np.uint8, mode=mode, shape=self.shape)

    def write(self, block: np.ndarray, *, t0: int = 0, y0: int = 0, x0: int = 0) -> None:
        """``block``: uint8 (t, h, w, 3) placed at frame ``t0``, pixel (y0, x0)."""
        t, h, w, _ = block.shape
        mm = self._map("r+")
        mm[t0 : t0 + t, y0 : y0 + h, x0 : x0 + w] = block
        mm.flush()
        del mm

    def read(self, t0: int, t1: int, y0: int = 0, y1: int | None = None, x0: int = 0, x1: int | None = None) -> np.ndarray:
        mm = self._map("r")
        out = np.array(mm[t0:t1, y0 : self.height if y1 is None else y1, x0 : self.width if x1 is None else x1])
        del mm
        return out

    def crop(self, t0: int, t1: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        """(1, 3, t, h, w) float in [-1, 1]."""
        return to_model_range(self.read(t0, t1, y0, y1, x0, x1))

    def put(self, pixels: torch.Tensor, *, t0: int, y0: int, x0: int) -> None:
        """(1, 3, t, h, w) in [-1, 1] -> uint8 at frame ``t0``, pixel (y0, x0)."""
        self.write(to_uint8(pixels), t0=t0, y0=y0, x0=x0)

    def frames_iter(self):
        for t in range(self.frames):
            yield self.read(t, t + 1)[0]

    def unlink(self) -> None:
        self.path.unlink(missing_ok=True)


def to_model_range(frames: np.ndarray) -> torch.Tensor:
    """uint8 (t, h, w, 3) -> (1, 3, t, h, w) float in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(127.5).sub_(1)[None]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(1, 3, t, h, w) in [-1, 1] -> uint8 (t, h, w, 3)."""
    return ((video[0].detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()
