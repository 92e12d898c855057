"""Decoder fusion: out^(1..4) onto the VAE latent grid (resample + concat + project to z_dim).

Each level is resampled by a learned causal patch conv whose kernel is one
latent cell, then the levels are concatenated and projected per cell by a
small MLP. Every latent cell therefore depends only on the tokens inside it —
which makes tiled decoding exact up to the VAE decoder itself.
"""

from __future__ import annotations

import torch
from torch import nn

from pyratok.model.config import FusionConfig
from pyratok.model.grid import CausalPatchDown, Grid


class DecoderFusion(nn.Module):
    def __init__(self, *, cfg: FusionConfig, level_dim: int, level_grids: list[Grid], latent_grid: Grid, z_dim: int):
        super().__init__()
        self.resample = nn.ModuleList(
            CausalPatchDown(level_dim, cfg.dim, factor_t=ft, factor_s=fs)
            for ft, fs in (grid.ratio_to(latent_grid) for grid in level_grids)
        )
        self.project = nn.Sequential(
            nn.Conv3d(cfg.dim * len(level_grids), cfg.hidden, 1),
            nn.SiLU(),
            nn.Conv3d(cfg.hidden, z_dim, 1),
        )

    def forward(self, level_outs: list[torch.Tensor], *, first: bool = True) -> torch.Tensor:
        """[(B, dim, t_l, h_l, w_l)] -> latents (B, z_dim, t, h, w); ``first=False`` for a later time chunk."""
        return self.project(torch.cat([r(x, first=first) for r, x in zip(self.resample, level_outs)], dim=1))
