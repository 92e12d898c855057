"""Semantic head: token bits -> the text-embedding space, and the text's factorized distribution over codes.

s_i = W_s b_i. Because s is linear in the bits, the softmax over every code c
of <e, W_s c> / T is a product of per-bit Bernoullis with logits
2 (W_s^T e)_i / T (the two values of bit i differ by 2 (W_s^T e)_i / T in the
exponent) — the text's distribution p_t over the 2^bits codes, never built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SemanticHead(nn.Module):
    def __init__(self, *, code_bits: int, text_dim: int):
        super().__init__()
        self.proj = nn.Linear(code_bits, text_dim, bias=False)  # W_s (a bias would cancel in p_t anyway)

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        """(..., bits) -> (..., text_dim)."""
        return self.proj(bits)

    def text_code_logits(self, text_pooled: torch.Tensor, temperature: float) -> torch.Tensor:
        """(B, text_dim) pooled text -> (B, bits) per-bit logits of p_t = softmax_c(<e, W_s c> / T), e unit-norm."""
        e = F.normalize(text_pooled.float(), dim=-1)
        return 2 * (e @ self.proj.weight.float()) / temperature
