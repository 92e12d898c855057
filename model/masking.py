"""Training-time masking (MaskGIT style): whole frames plus per-frame spatial patches.

- ``frame_ratio`` of the frames (rounded, at most T-1) are blanked; frame 0 — the
  causal key frame — never is;
- every other frame (except frame 0) gets ``ratio(progress)`` of its patches
  blanked, ratio = spatial_max_ratio * cos(pi/2 * progress): heavy masking
  early in training, none at the end (MaskGIT's cosine schedule over training
  progress);
- masked pixels are set to ``fill_value`` (0 = mid grey in [-1, 1]); the loss
  target stays the unmasked video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pyratok.model.config import MaskingConfig


@dataclass
class MaskResult:
    video: torch.Tensor
    """The masked input."""
    frames: torch.Tensor
    """(B, T) bool: frame fully masked."""
    patches: torch.Tensor
    """(B, T, H/p, W/p) bool: patch masked (frame masks excluded)."""
    spatial_ratio: float


def spatial_ratio(cfg: MaskingConfig, progress: float) -> float:
    progress = min(max(float(progress), 0.0), 1.0)
    return cfg.spatial_max_ratio * math.cos(math.pi / 2 * progress)


def masked_frame_count(frames: int, ratio: float) -> int:
    return min(frames - 1, int(round(ratio * frames)))


@dataclass
class MaskDraw:
    """Which frames and patches one batch masks; applied to the whole clip or to any crop of it."""

    frames: torch.Tensor
    """(B, T) bool."""
    patches: torch.Tensor
    """(B, T, H/p, W/p) bool (frame masks excluded)."""
    patch: int
    spatial_ratio: float
    fill_value: float

    def apply(self, video: torch.Tensor, *, frame0: int = 0, y0: int = 0, x0: int = 0) -> torch.Tensor:
        """Mask ``video`` (B, 3, t, h, w), the crop of the clip that starts at frame ``frame0``, pixel (y0, x0)."""
        _, _, t, h, w = video.shape
        frames = self.frames[:, frame0 : frame0 + t]
        rows = torch.arange(y0, y0 + h) // self.patch
        cols = torch.arange(x0, x0 + w) // self.patch
        patches = self.patches[:, frame0 : frame0 + t].index_select(2, rows).index_select(3, cols)
        pixel = (patches | frames[:, :, None, None]).to(video.device)[:, None]
        return torch.where(pixel, torch.full_like(video, self.fill_value), video)


def draw_mask(shape: tuple[int, ...], cfg: MaskingConfig, *, patch: int, progress: float,
              generator: torch.Generator | None = None) -> MaskDraw:
    """The masks of a (B, 3, T, H, W) batch (drawn on the CPU generator: reproducible whatever the device)."""
    b, _, t, h, w = shape
    if h % patch or w % patch:
        raise ValueError(f"masking patch {patch} does not divide the {h}x{w} frames")
    gh, gw = h // patch, w // patch
    n_frames = masked_frame_count(t, cfg.frame_ratio)
    frames = torch.zeros(b, t, dtype=torch.bool)
    if n_frames:
        order = torch.rand(b, t - 1, generator=generator).argsort(1)[:, :n_frames] + 1
        frames.scatter_(1, order, True)
    ratio = spatial_ratio(cfg, progress)
    n_patches = int(round(ratio * gh * gw))
    patches = torch.zeros(b, t, gh * gw, dtype=torch.bool)
    if n_patches:
        order = torch.rand(b, t, gh * gw, generator=generator).argsort(-1)[..., :n_patches]
        patches.scatter_(2, order, True)
        patches[:, 0] = False
    patches = patches.view(b, t, gh, gw) & ~frames[:, :, None, None]
    return MaskDraw(frames=frames, patches=patches, patch=patch, spatial_ratio=ratio, fill_value=cfg.fill_value)


def apply_mask(video: torch.Tensor, cfg: MaskingConfig, *, patch: int, progress: float,
               generator: torch.Generator | None = None) -> MaskResult:
    drawn = draw_mask(tuple(video.shape), cfg, patch=patch, progress=progress, generator=generator)
    return MaskResult(video=drawn.apply(video), frames=drawn.frames.to(video.device),
                      patches=drawn.patches.to(video.device), spatial_ratio=drawn.spatial_ratio)
