"""Codebook terms over the pyramid's levels (all per bit or per bit group; never tokens x 2^bits).

- commitment: ||z - sg(b)||^2;
- entropy: per-token entropy - gamma * codebook entropy (exact within bit groups; see ``lfq``);
- hierarchical KL: KL(q^(l) || q^(l-1) averaged onto level l's grid), per-bit Bernoulli KL;
- text KL: KL(q_i || sg(p_t)) per token, p_t the text's factorized distribution over codes;
- text alignment: symmetric InfoNCE between pooled token semantics and the pooled text embedding.
Level terms are averaged over levels (pairs of levels for the hierarchical KL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyratok.model.grid import causal_avg_pool, to_channels, to_tokens
from pyratok.model.lapq import LevelOutput
from pyratok.model.lfq import bernoulli_kl, bernoulli_kl_probs, entropy_aux
from pyratok.model.lfq import commitment as level_commitment


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean(0)


def commitment(levels: list[LevelOutput]) -> torch.Tensor:
    return _mean([level_commitment(lv.quantized) for lv in levels])


def entropy(levels: list[LevelOutput], *, gamma: float, exact: bool = True,
            group_bits: int = 8) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(mean over levels of token entropy - gamma * codebook entropy, per-level entropies for metrics)."""
    terms, stats = [], {}
    for i, lv in enumerate(levels, start=1):
        term, token_h, book_h = entropy_aux(lv.quantized, gamma=gamma, exact=exact, group_bits=group_bits)
        terms.append(term)
        stats[f"token_entropy/level{i}"] = token_h.detach()
        stats[f"codebook_entropy/level{i}"] = book_h.detach()
    return _mean(terms), stats


def hierarchical_kl(levels: list[LevelOutput]) -> torch.Tensor:
    terms = []
    for parent, child in zip(levels[:-1], levels[1:]):
        ft, fs = parent.grid.ratio_to(child.grid)
        parent_p = to_tokens(causal_avg_pool(to_channels(torch.sigmoid(parent.quantized.logits)), ft, fs))
        child_p = torch.sigmoid(child.quantized.logits)
        terms.append(bernoulli_kl_probs(child_p, parent_p).sum(-1).mean())
    return _mean(terms)


def text_kl(levels: list[LevelOutput], text_logits: torch.Tensor) -> torch.Tensor:
    """``text_logits``: (B, bits) per-bit logits of p_t (stop-gradient applied here)."""
    target = text_logits.detach()[:, None, None, None, :]
    return _mean([bernoulli_kl(lv.quantized.logits, target).sum(-1).mean() for lv in levels])


def pooled_bits(levels: list[LevelOutput]) -> torch.Tensor:
    """(B, bits): mean straight-through bits per level, averaged over levels (so s = W_s of it = mean_i s_i)."""
    return _mean([lv.quantized.bits.flatten(1, 3).mean(1) for lv in levels])


_GROUPS: dict = {}


def _gather_group():
    """A process group of its own for the gather: its collectives (the forward all_gather and the one its
    backward issues) never interleave with DDP's/DeepSpeed's gradient all-reduces on the default group,
    which run in whatever order gradients become ready."""
    import torch.distributed as dist

    key = (id(dist.group.WORLD), dist.get_world_size())
    if key not in _GROUPS:
        _GROUPS[key] = dist.new_group(backend=dist.get_backend())
    return _GROUPS[key]


class _GatherWithGradient(torch.autograd.Function):
    """all_gather whose backward hands each rank its rows' share of every rank's gradient (each rank's
    loss depends on all rows): the semantics of ``torch.distributed.nn.functional.all_gather``, which
    torch deprecates. The backward all-reduces (gloo has no reduce_scatter): rows x bits, small."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> tuple[torch.Tensor, ...]:
        import torch.distributed as dist

        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        import torch.distributed as dist

        summed = torch.stack(grads).contiguous()
        dist.all_reduce(summed, group=ctx.group)
        return summed[dist.get_rank(ctx.group)], None


def _gather_across_workers(x: torch.Tensor) -> torch.Tensor:
    """Every worker's rows (workers may hold different batch sizes), this worker's with their gradient path."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    group = _gather_group()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device), group=group)
    counts = [int(n) for n in sizes]
    padded = torch.cat([x, x.new_zeros(max(counts) - x.shape[0], *x.shape[1:])]) if x.shape[0] < max(counts) else x
    parts = _GatherWithGradient.apply(padded.contiguous(), group)
    return torch.cat([part[:n] for part, n in zip(parts, counts)], dim=0)


def text_alignment(token_semantics: torch.Tensor, text_pooled: torch.Tensor, temperature: float, *,
                   across_workers: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE: cross-entropy (= KL to the one-hot diagonal target) both ways across the batch.

    ``across_workers``: the batch is every data-parallel worker's clips (all_gather with gradients), so
    each clip is contrasted with the global batch, not its own worker's few (at one clip per worker
    the local loss is identically 0). Every worker then computes the same global loss; the backward of
    all_gather sums each worker's share back to it, and the gradient average of DDP/DeepSpeed turns that
    into the gradient of the single global loss.
    """
    s = F.normalize(token_semantics.float(), dim=-1)
    e = F.normalize(text_pooled.float(), dim=-1)
    if across_workers:
        s, e = _gather_across_workers(s), _gather_across_workers(e)
    logits = s @ e.T / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
