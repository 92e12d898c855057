"""The causal space-time grids of the pyramid and how to move between them.

A level with spatial stride ``s`` and temporal factor ``f`` over a video of
``T = 1 + 4k`` frames has ``1 + (T-1)/f`` frames: frame 0 stands alone (Wan's
causal first chunk) and every later cell covers ``f`` frames. Going from a
finer grid to a coarser one therefore groups frame 0 alone and the rest in
runs of ``f``; both resamplers below do exactly that, so no cell ever mixes
frame 0 with later frames and the mapping is exact (no interpolation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Grid:
    """One level's grid relative to the input video."""

    stride: int
    """Pixels per token side."""
    frames_per_cell: int
    """Temporal factor (frames per cell after frame 0)."""

    def shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return (1 + (frames - 1) // self.frames_per_cell, height // self.stride, width // self.stride)

    def ratio_to(self, coarser: "Grid") -> tuple[int, int]:
        """(temporal, spatial) factors from this grid to a coarser one."""
        if coarser.stride % self.stride or coarser.frames_per_cell % self.frames_per_cell:
            raise ValueError(f"grid {coarser} is not a coarsening of {self}")
        return coarser.frames_per_cell // self.frames_per_cell, coarser.stride // self.stride


def fine_frame_range(start: int, stop: int, factor_t: int) -> tuple[int, int]:
    """Coarse frames [start, stop) -> the fine frames they cover (causal grouping)."""
    lo = 0 if start == 0 else 1 + factor_t * (start - 1)
    hi = 1 + factor_t * (stop - 1)
    return lo, hi


def causal_avg_pool(x: torch.Tensor, factor_t: int, factor_s: int, *, first: bool = True) -> torch.Tensor:
    """Average (B, C, t, h, w) onto a grid ``factor_t`` x ``factor_s`` coarser (frame 0 pooled alone).

    ``first=False``: ``x`` is a later time chunk of the clip (no frame 0 in it), pooled in runs of ``factor_t``.
    """
    if factor_t == 1 and factor_s == 1:
        return x
    if not first:
        return F.avg_pool3d(x, (factor_t, factor_s, factor_s))
    head = F.avg_pool3d(x[:, :, :1], (1, factor_s, factor_s))
    if x.shape[2] == 1:
        return head
    rest = F.avg_pool3d(x[:, :, 1:], (factor_t, factor_s, factor_s))
    return torch.cat([head, rest], dim=2)


class CausalPatchDown(nn.Module):
    """Learned resample onto a coarser grid: a strided conv whose kernel is exactly one coarse cell.

    Frame 0 is front-padded with ``factor_t - 1`` zero frames (as Wan's own
    AvgDown3D does) so it forms a cell of its own. Because the kernel equals
    the stride, every output cell depends only on its own input cell: tiles
    can be resampled independently and still match an untiled run.
    """

    def __init__(self, in_dim: int, out_dim: int, *, factor_t: int, factor_s: int):
        super().__init__()
        self.factor_t, self.factor_s = factor_t, factor_s
        kernel = (factor_t, factor_s, factor_s)
        self.conv = nn.Conv3d(in_dim, out_dim, kernel, stride=kernel)

    def forward(self, x: torch.Tensor, *, first: bool = True) -> torch.Tensor:
        """``first=False``: ``x`` is a later time chunk (starts on a cell boundary, so no front padding)."""
        if self.factor_t > 1 and first:
            x = F.pad(x, (0, 0, 0, 0, self.factor_t - 1, 0))
        return self.conv(x)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, t, h, w) -> (B, t, h, w, C)."""
    return x.permute(0, 2, 3, 4, 1)


def to_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, t, h, w, C) -> (B, C, t, h, w)."""
    return x.permute(0, 4, 1, 2, 3)
