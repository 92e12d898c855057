"""Training-time masking, as PyraTok's Appendix B reads: "temporally mask 30% of frames and apply
cosine-based spatial masking on each frame following [MaskGIT]".

- ``frame_ratio`` of the frames (rounded, at most T-1) are blanked whole. Frame 0 never is: the
  causal Wan VAE encodes it alone into the first latent frame, so blanking it leaves that latent
  (and the causal context every later chunk starts from) with no content at all; the other frames
  keep their causal predecessors;
- every frame, frame 0 included, gets a fraction of its patches blanked, drawn per sample as
  MaskGIT does: r ~ U(0, 1), ratio = spatial_max_ratio * cos(pi/2 * r) (so most samples mask heavily
  and a few lightly, at every point of training, not an anneal over it);
- masked pixels are set to ``fill_value`` (0 = mid grey in [-1, 1]); the loss target stays the
  unmasked video.
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
    spatial_ratio: torch.Tensor
    """(B,) each sample's spatial ratio."""


def spatial_ratios(cfg: MaskingConfig, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) MaskGIT's cosine schedule, one draw per sample: spatial_max_ratio * cos(pi/2 * r), r ~ U(0, 1)."""
    r = torch.rand(batch, generator=generator, dtype=torch.float64)
    return (cfg.spatial_max_ratio * torch.cos(math.pi / 2 * r)).float()


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
    spatial_ratio: torch.Tensor
    """(B,) each sample's spatial ratio."""
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


def draw_mask(shape: tuple[int, ...], cfg: MaskingConfig, *, patch: int,
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
    ratios = spatial_ratios(cfg, b, generator)
    n_patches = torch.round(ratios * gh * gw).long()  # (B,)
    # each frame its own random patches: a patch is masked when its rank among the frame's is < n
    rank = torch.rand(b, t, gh * gw, generator=generator).argsort(-1).argsort(-1)
    patches = rank < n_patches[:, None, None]
    patches = patches.view(b, t, gh, gw) & ~frames[:, :, None, None]
    return MaskDraw(frames=frames, patches=patches, patch=patch, spatial_ratio=ratios, fill_value=cfg.fill_value)


def apply_mask(video: torch.Tensor, cfg: MaskingConfig, *, patch: int,
               generator: torch.Generator | None = None) -> MaskResult:
    drawn = draw_mask(tuple(video.shape), cfg, patch=patch, generator=generator)
    return MaskResult(video=drawn.apply(video), frames=drawn.frames.to(video.device),
                      patches=drawn.patches.to(video.device), spatial_ratio=drawn.spatial_ratio)
