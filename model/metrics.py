"""Codebook health metrics from token ids (histograms over used codes only, never over all 2^bits)."""

from __future__ import annotations

import torch


def codebook_usage(ids: torch.Tensor, code_bits: int) -> torch.Tensor:
    """Distinct codes used / the most that could be used by this many tokens (1.0 = all different)."""
    return torch.tensor(float(torch.unique(ids).numel()) / min(ids.numel(), 2**code_bits))


def perplexity(ids: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the empirical code distribution."""
    _, counts = torch.unique(ids, return_counts=True)
    p = counts.float() / counts.sum()
    return torch.exp(-(p * p.log()).sum())
