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


def apply_mask(video: torch.Tensor, cfg: MaskingConfig, *, patch: int, progress: float,
               generator: torch.Generator | None = None) -> MaskResult:
    b, _, t, h, w = video.shape
    if h % patch or w % patch:
        raise ValueError(f"masking patch {patch} does not divide the {h}x{w} frames")
    gh, gw = h // patch, w // patch
    # Masks are drawn on the CPU generator (reproducible whatever the device), then moved.
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
    pixel = patches.repeat_interleave(patch, 2).repeat_interleave(patch, 3) | frames[:, :, None, None]
    pixel = pixel.to(video.device)[:, None]
    masked = torch.where(pixel, torch.full_like(video, cfg.fill_value), video)
    return MaskResult(video=masked, frames=frames.to(video.device), patches=patches.to(video.device), spatial_ratio=ratio)
