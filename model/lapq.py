"""LaPQ: language-aligned pyramidal quantization, q^(l) = Q_l(q^(l-1), F^(l), e_t).

Level l (design section 4):
1. h = Norm(Proj(F^(l))) + Resample(q^(l-1))  — lateral projection of the tap plus the
   previous level's quantized output brought to this level's (coarser or equal) grid by a
   learned causal patch resample (kernel = one cell, see ``grid.CausalPatchDown``);
2. h = h + MHA(query=h, key/value=Proj_t(E_t), text padding mask)  — local text alignment;
3. z = GroupNorm_noaffine(W_q h) in R^bits;
4. bits = sign(z) straight-through, token id = sum_i [b_i > 0] 2^i — one code space for all levels;
5. out^(l) = W_out bits.
Level 1 is the shallowest (finest) tap, level 4 the deepest (the latent grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pyratok.model.config import LapqConfig
from pyratok.model.grid import CausalPatchDown, Grid, to_channels, to_tokens
from pyratok.model.lfq import BinaryQuantizer, Quantized
from pyratok.model.text_encoder import TextEmbedding


class TextCrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention from visual tokens to text tokens (padding masked)."""

    def __init__(self, *, dim: int, text_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(text_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text: TextEmbedding) -> torch.Tensor:
        """x (B, N, dim) -> x + attention(x, text)."""
        b, n, d = x.shape
        q = self.to_q(self.norm(x)).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(text.tokens.to(x.dtype)).chunk(2, dim=-1)
        k = k.view(b, -1, self.heads, d // self.heads).transpose(1, 2)
        v = v.view(b, -1, self.heads, d // self.heads).transpose(1, 2)
        mask = text.mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x + self.out(attended.transpose(1, 2).reshape(b, n, d))


@dataclass
class LevelOutput:
    grid: Grid
    quantized: Quantized
    """z, bits (straight-through), ids, per-bit logits; channels last (B, t, h, w, bits)."""
    out: torch.Tensor
    """W_out bits, channels first (B, dim, t, h, w)."""

    @property
    def ids(self) -> torch.Tensor:
        return self.quantized.ids


class LapqLevel(nn.Module):
    def __init__(self, *, in_channels: int, cfg: LapqConfig, text_dim: int, prev_factors: tuple[int, int] | None):
        super().__init__()
        self.lateral = nn.Linear(in_channels, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)
        self.prev = None
        if prev_factors is not None:
            self.prev = CausalPatchDown(cfg.dim, cfg.dim, factor_t=prev_factors[0], factor_s=prev_factors[1])
        self.text_attn = TextCrossAttention(dim=cfg.dim, text_dim=text_dim, heads=cfg.heads) if cfg.text_cross_attention else None
        self.to_code = nn.Linear(cfg.dim, cfg.code_bits)
        self.quantizer = BinaryQuantizer(code_bits=cfg.code_bits, norm_groups=cfg.z_norm_groups,
                                         inv_temperature=cfg.inv_temperature)
        self.from_code = nn.Linear(cfg.code_bits, cfg.dim)

    def forward(self, feature: torch.Tensor, prev_out: torch.Tensor | None, text: TextEmbedding | None, *,
                first: bool = True) -> tuple[Quantized, torch.Tensor]:
        h = self.norm(self.lateral(to_tokens(feature)))
        if self.prev is not None:
            h = h + to_tokens(self.prev(prev_out, first=first))
        if self.text_attn is not None:
            if text is None:
                raise ValueError("this model conditions its quantizers on text: pass one caption per video")
            b, t, hh, ww, d = h.shape
            h = self.text_attn(h.reshape(b, -1, d), text).view(b, t, hh, ww, d)
        q = self.quantizer(self.to_code(h))
        return q, to_channels(self.from_code(q.bits.to(h.dtype)))

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """out^(l) from stored token ids (decode path): (B, t, h, w) -> (B, dim, t, h, w)."""
        from pyratok.model.lfq import ids_to_bits

        bits = ids_to_bits(ids, self.quantizer.code_bits, self.from_code.weight.dtype)
        return to_channels(self.from_code(bits))


class Lapq(nn.Module):
    """Four (len(taps)) levels over the encoder taps, one shared binary code space."""

    def __init__(self, *, cfg: LapqConfig, tap_channels: list[int], tap_grids: list[Grid], text_dim: int):
        super().__init__()
        self.cfg = cfg
        self.grids = list(tap_grids)
        levels = []
        for i, (channels, grid) in enumerate(zip(tap_channels, tap_grids)):
            prev = None if i == 0 else tap_grids[i - 1].ratio_to(grid)
            levels.append(LapqLevel(in_channels=channels, cfg=cfg, text_dim=text_dim, prev_factors=prev))
        self.levels = nn.ModuleList(levels)

    @property
    def code_bits(self) -> int:
        return self.cfg.code_bits

    def forward(self, taps: list[torch.Tensor], text: TextEmbedding | None, *, first: bool = True) -> list[LevelOutput]:
        """``first=False``: the taps are a later time chunk of the clip (every op is local to a coarse cell)."""
        outputs: list[LevelOutput] = []
        prev = None
        for level, grid, feature in zip(self.levels, self.grids, taps):
            q, out = level(feature, prev, text, first=first)
            outputs.append(LevelOutput(grid=grid, quantized=q, out=out))
            prev = out
        return outputs
