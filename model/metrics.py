"""Codebook health metrics from token ids (histograms over used codes only, never over all 2^bits)."""

from __future__ import annotations

import math

import torch


def codebook_usage(ids: torch.Tensor, code_bits: int) -> torch.Tensor:
    """Distinct codes used / the most that could be used by this many tokens (1.0 = all different)."""
    return torch.tensor(float(torch.unique(ids).numel()) / min(ids.numel(), 2**code_bits))


def perplexity(ids: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the empirical code distribution."""
    _, counts = torch.unique(ids, return_counts=True)
    p = counts.float() / counts.sum()
    return torch.exp(-(p * p.log()).sum())


class CodebookUtilisation:
    """Codebook use over a whole evaluation pass, not one batch: per level and over all levels (one shared codebook).

    Keeps each level's histogram of the ids seen so far, sparse (the used codes and their counts), so
    memory follows the codes used, never 2^bits. ``merge`` adds another pass's counts (one
    accumulator per worker, merged at the end).
    """

    def __init__(self, code_bits: int, levels: int):
        self.code_bits = code_bits
        empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        self.counts: list[tuple[torch.Tensor, torch.Tensor]] = [empty] * levels

    @staticmethod
    def _add(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]):
        codes, inverse = torch.unique(torch.cat([a[0], b[0]]), return_inverse=True)
        counts = torch.zeros(codes.numel(), dtype=torch.long).index_add_(0, inverse, torch.cat([a[1], b[1]]))
        return codes, counts

    def update(self, ids: list[torch.Tensor]) -> None:
        """One batch's ids, one tensor per level (any shape)."""
        if len(ids) != len(self.counts):
            raise ValueError(f"expected ids for {len(self.counts)} levels, got {len(ids)}")
        for i, level in enumerate(ids):
            codes, counts = torch.unique(level.detach().flatten().long().cpu(), return_counts=True)
            self.counts[i] = self._add(self.counts[i], (codes, counts))

    def update_counts(self, per_level: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Already counted ids: one ``(codes, counts)`` per level (e.g. a clip's histogram from an eval worker)."""
        if len(per_level) != len(self.counts):
            raise ValueError(f"expected counts for {len(self.counts)} levels, got {len(per_level)}")
        self.counts = [self._add(a, (c.long(), n.long())) for a, (c, n) in zip(self.counts, per_level)]

    def merge(self, other: "CodebookUtilisation") -> "CodebookUtilisation":
        if (other.code_bits, len(other.counts)) != (self.code_bits, len(self.counts)):
            raise ValueError("cannot merge codebook utilisation of different codebooks or level counts")
        self.counts = [self._add(a, b) for a, b in zip(self.counts, other.counts)]
        return self

    @staticmethod
    def _summary(counts: torch.Tensor, size: int) -> dict[str, float]:
        total = int(counts.sum())
        p = counts.double() / max(total, 1)
        entropy = float(-(p * p.clamp_min(1e-300).log()).sum()) if total else 0.0
        return {"used": float(counts.numel()), "utilisation": counts.numel() / size, "tokens": float(total),
                "entropy": entropy, "perplexity": math.exp(entropy)}

    def summary(self) -> dict[str, float]:
        """``level<i>/<stat>`` and ``all/<stat>`` for used codes, used / 2^bits, tokens, histogram entropy (nats), perplexity."""
        size = 2**self.code_bits
        out: dict[str, float] = {}
        for i, (_, counts) in enumerate(self.counts, start=1):
            out.update({f"level{i}/{k}": v for k, v in self._summary(counts, size).items()})
        union = self.counts[0]
        for part in self.counts[1:]:
            union = self._add(union, part)
        out.update({f"all/{k}": v for k, v in self._summary(union[1], size).items()})
        return out
