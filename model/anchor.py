"""The DINOv3 anchor of the drift term: the tapped features the tokenizer quantizes, held to a frozen DINOv3.

Appendix B: "En(·) refers to the frozen DINOv3 encoder ... used to provide stable, high-quality visual
features that anchor adaptation and prevent drift from the pretrained visual manifold." The ablation
calls drift the term "which anchors the adapted encoder to the pretrained VAE manifold". Both readings
are offered (``losses.drift.anchor``): ``vae`` (the adapted taps against the frozen Wan encoder's,
``losses/retention.drift``), ``dino`` (this module), ``both`` (their sum); the paper preset takes ``dino``.

The DINO form, per tap level and frame sampled for DINO: the level's tap cells are averaged over each DINO
patch (a cell belongs to the patch its centre falls in, after DINO's own resize and centre crop; cells
outside the crop belong to none), a learned linear head maps them to DINO's width, and the loss is the
mean of 1 - cos against DINO's patch tokens of the input frame (REPA's alignment, on the taps). Only
patch *sums* come out of a tile: the tiled forward adds them up and divides once, as the untiled does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def axis_membership(length: int, other: int, *, stride: int, image_size: int, patch: int) -> torch.Tensor:
    """(patches, cells) 0/1: which of ``length // stride`` cells along one axis falls in which DINO patch.

    DINO resizes the short side to ``image_size`` (both axes by the same scale) and centre-crops
    ``image_size``; ``other`` is the frame's other side.
    """
    scale = image_size / min(length, other)
    resized = max(image_size, round(length * scale))
    offset = (resized - image_size) // 2
    cells = length // stride
    centre = (torch.arange(cells, dtype=torch.float64) + 0.5) * stride * resized / length - offset
    index = torch.floor(centre / patch).long()
    grid = image_size // patch
    inside = (centre >= 0) & (index < grid)
    member = torch.zeros(grid, cells)
    member[index[inside], torch.arange(cells)[inside]] = 1.0
    return member


def cell_of_frame(frame: int, frames_per_cell: int) -> int:
    """The causal grid's time cell holding pixel frame ``frame`` (frame 0 alone)."""
    return 0 if frame == 0 else 1 + (frame - 1) // frames_per_cell


class DinoAnchor(nn.Module):
    """Per-level linear heads from the taps' channels to DINO's width, and the patch pooling."""

    def __init__(self, tap_channels: list[int], dino_dim: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(c, dino_dim) for c in tap_channels)

    @staticmethod
    def membership(grid, height: int, width: int, *, image_size: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = axis_membership(height, width, stride=grid.stride, image_size=image_size, patch=patch)
        cols = axis_membership(width, height, stride=grid.stride, image_size=image_size, patch=patch)
        return rows, cols

    @staticmethod
    def patch_sums(tap: torch.Tensor, frames: list[int], grid, t0: int, rows: torch.Tensor, cols: torch.Tensor,
                   r0: int, c0: int) -> torch.Tensor:
        """(B, frames, C, P, P) sums of a tap crop's cells per DINO patch, at the sampled ``frames``.

        ``tap``: (B, C, t, h, w), its first time cell is the level's cell ``t0`` and its first row/column the
        global cells ``r0``/``c0``; a frame whose cell is not in the crop contributes zeros.
        """
        b, c, t, h, w = tap.shape
        rm, cm = rows[:, r0 : r0 + h].to(tap), cols[:, c0 : c0 + w].to(tap)
        out = []
        for k in frames:
            local = cell_of_frame(k, grid.frames_per_cell) - t0
            if 0 <= local < t:
                out.append(torch.einsum("ph,bchw,qw->bcpq", rm, tap[:, :, local].float(), cm.float()))
            else:
                out.append(tap.new_zeros(b, c, rows.shape[0], cols.shape[0], dtype=torch.float32))
        return torch.stack(out, dim=1)

    def loss(self, sums: list[torch.Tensor], memberships: list[tuple[torch.Tensor, torch.Tensor]],
             target: torch.Tensor) -> torch.Tensor:
        """Mean over levels of the mean 1 - cos over (clips, frames, patches holding a cell).

        ``sums``: per level (B, F, C, P, P); ``target``: DINO's patch tokens (B * F, P * P, D).
        """
        per_level = []
        for head, level_sums, (rows, cols) in zip(self.heads, sums, memberships):
            counts = rows.sum(1)[:, None] * cols.sum(1)[None, :]  # cells per patch
            b, f, c, p, q = level_sums.shape
            pooled = level_sums / counts.clamp_min(1).to(level_sums)
            feats = head(pooled.permute(0, 1, 3, 4, 2).reshape(b * f, p * q, c).to(head.weight.dtype))
            cos = F.cosine_similarity(feats.float(), target.detach().float(), dim=-1)  # (B*F, P*Q)
            used = (counts.flatten() > 0).to(cos)
            per_level.append(((1 - cos) * used).sum() / (used.sum() * b * f))
        return torch.stack(per_level).mean()


@dataclass
class AnchorPlan:
    frames: list[int]
    """Pixel frames the anchor scores (DINO's own frame sampling)."""
    memberships: list[tuple[torch.Tensor, torch.Tensor]]
    """Per level: (patches x rows, patches x cols) 0/1, the tap cells each DINO patch averages."""


def anchor_plan(dino, grids, shape: tuple[int, ...]) -> AnchorPlan:
    """What the anchor needs of a (B, 3, T, H, W) clip: DINO's sampled frames, each level's memberships."""
    from pyratok.model.dino import sample_frames

    _, _, frames, height, width = shape
    patch = int(dino.model.config.patch_size)
    if dino.image_size % patch:
        raise ValueError(f"model.dino.image_size={dino.image_size} is not a multiple of DINO's patch {patch}")
    memberships = [DinoAnchor.membership(g, height, width, image_size=dino.image_size, patch=patch) for g in grids]
    return AnchorPlan(frames=[int(k) for k in sample_frames(frames, dino.max_frames)], memberships=memberships)
