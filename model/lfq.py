"""Lookup-free binary quantization into one shared code space {-1,+1}^bits.

A token's code is the sign pattern of its 16-dim ``z``; its id is
``sum_i [b_i > 0] 2^i``. The soft posterior over all 2^bits codes,
``softmax_c(-tau ||z - c||^2)``, factorizes into independent bits with logits
``4 tau z_i`` (``||c||^2`` is constant, so only ``2 tau <z, c>`` varies), so
every quantity here is computed per bit or within small bit groups and
nothing ever builds a (tokens x 2^bits) tensor:

- the per-token entropy of a product of Bernoullis is the sum of the bit
  entropies (exact);
- the codebook entropy is the entropy of the batch-averaged distribution,
  which is not a product; it is computed exactly over each group of ``g`` bits
  (tokens x 2^g), and the groups' entropies are summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def bit_weights(code_bits: int, device=None) -> torch.Tensor:
    return 2 ** torch.arange(code_bits, device=device, dtype=torch.int64)


def bits_to_ids(bits: torch.Tensor) -> torch.Tensor:
    """(..., bits) in {-1,+1} (or any sign) -> int64 ids, bit i worth 2^i."""
    return ((bits > 0).long() * bit_weights(bits.shape[-1], bits.device)).sum(-1)


def ids_to_bits(ids: torch.Tensor, code_bits: int, dtype=torch.float32) -> torch.Tensor:
    """int ids -> (..., bits) in {-1,+1}."""
    on = (ids.long().unsqueeze(-1) & bit_weights(code_bits, ids.device)) != 0
    return on.to(dtype) * 2 - 1


def all_codes(code_bits: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(2^bits, bits) every code in id order; only for small groups (and tests)."""
    return ids_to_bits(torch.arange(2**code_bits, device=device), code_bits, dtype)


def sign_straight_through(z: torch.Tensor) -> torch.Tensor:
    """sign(z) in {-1,+1} forward, identity gradient backward."""
    hard = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
    return hard + (z - z.detach())  # exact +-1 forward (z - z == 0), d/dz = 1


def bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-bit entropy (nats) of Bernoulli(sigmoid(logits))."""
    p = torch.sigmoid(logits)
    return p * F.softplus(-logits) + (1 - p) * F.softplus(logits)


def bernoulli_kl(logits_q: torch.Tensor, logits_p: torch.Tensor) -> torch.Tensor:
    """Per-bit KL(Bern(sigmoid(q)) || Bern(sigmoid(p))) in nats."""
    q = torch.sigmoid(logits_q)
    log_q1, log_q0 = -F.softplus(-logits_q), -F.softplus(logits_q)
    log_p1, log_p0 = -F.softplus(-logits_p), -F.softplus(logits_p)
    return q * (log_q1 - log_p1) + (1 - q) * (log_q0 - log_p0)


def bernoulli_kl_probs(q: torch.Tensor, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-bit KL between Bernoullis given as probabilities (e.g. after pooling)."""
    q = q.clamp(eps, 1 - eps)
    p = p.clamp(eps, 1 - eps)
    return q * (q.log() - p.log()) + (1 - q) * ((1 - q).log() - (1 - p).log())


def group_code_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(N, g) per-bit logits -> (N, 2^g) log-probabilities of every sub-code (product of Bernoullis).

    log p(c) = sum_i log sigmoid(c_i a_i) = <a, c>/2 - sum_i log(2 cosh(a_i/2)).
    """
    codes = all_codes(logits.shape[-1], logits.dtype, logits.device)
    half = logits / 2
    log_norm = (half.abs() + F.softplus(-2 * half.abs())).sum(-1, keepdim=True)  # sum log(2cosh(a/2)), stable
    return half @ codes.T - log_norm


def code_distribution_sum(logits: torch.Tensor, *, exact: bool = True, group_bits: int = 8) -> torch.Tensor:
    """The sum over tokens of each token's distribution over codes, as the entropy needs it.

    ``exact``: the joint over all 2^bits codes, as a (2^a, 2^b) matrix (the bits split into halves of
    a and b bits): sum_n q_A(n) q_B(n)^T, where q_A, q_B are a token's distributions over each half's
    sub-codes (products of its per-bit Bernoullis, so their outer product is its distribution over the
    whole code). One matmul; nothing tokens x 2^bits wide is ever built.
    Otherwise ``(groups, 2^group_bits)``: each bit group's marginal; ``entropy_of_average`` of it is the
    sum of the groups' entropies, an *upper bound* on the codebook entropy (tight only if the groups
    are independent across the batch).

    A sum, so it accumulates over tiles and time chunks; ``/ tokens`` is the batch average.
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()
    if not exact:
        return torch.stack([group_code_log_probs(group).exp().sum(0) for group in flat.split(group_bits, dim=-1)])
    half = (flat.shape[-1] + 1) // 2
    q_a, q_b = group_code_log_probs(flat[:, :half]).exp(), group_code_log_probs(flat[:, half:]).exp()
    with torch.autocast(device_type=flat.device.type, enabled=False):  # fp32: the entries go down to ~1/65,536
        return q_a.T @ q_b


def entropy_of_average(average: torch.Tensor) -> torch.Tensor:
    """-sum p log p over the entries of ``average`` (nats): the exact joint's entropy, or the groups' entropies summed."""
    return -(average * average.clamp_min(1e-12).log()).sum()


def codebook_entropy(logits: torch.Tensor, *, exact: bool = True, group_bits: int = 8) -> torch.Tensor:
    """Entropy (nats) of the token-averaged code distribution (``exact``: over all codes; else the grouped bound)."""
    tokens = logits.numel() // logits.shape[-1]
    return entropy_of_average(code_distribution_sum(logits, exact=exact, group_bits=group_bits) / tokens)


def per_token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the entropy (nats) of each token's full code distribution (exact)."""
    return bernoulli_entropy(logits.float()).sum(-1).mean()


@dataclass
class Quantized:
    """One level's quantization: all (..., bits) except ``ids``."""

    z: torch.Tensor
    """Normalized pre-quantization vector."""
    bits: torch.Tensor
    """sign(z) with straight-through gradient."""
    ids: torch.Tensor
    """int64 code ids (...)."""
    logits: torch.Tensor
    """Per-bit posterior logits 4 tau z."""


class BinaryQuantizer(nn.Module):
    """z = GroupNorm_noaffine(x); bits = sign(z) (straight-through); ids; per-bit logits."""

    def __init__(self, *, code_bits: int = 16, norm_groups: int = 1, inv_temperature: float = 1.0):
        super().__init__()
        self.code_bits = code_bits
        self.norm_groups = norm_groups
        self.inv_temperature = inv_temperature

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        z = F.group_norm(x.reshape(-1, shape[-1]).float(), self.norm_groups, eps=1e-5)
        return z.reshape(shape)

    def forward(self, x: torch.Tensor) -> Quantized:
        if x.shape[-1] != self.code_bits:
            raise ValueError(f"quantizer expects {self.code_bits} channels last, got shape {tuple(x.shape)}")
        z = self.normalize(x)
        bits = sign_straight_through(z)
        return Quantized(z=z, bits=bits, ids=bits_to_ids(z.detach()), logits=4 * self.inv_temperature * z)


def commitment(q: Quantized) -> torch.Tensor:
    """||z - sg(b)||^2 (mean)."""
    return (q.z - q.bits.detach()).pow(2).mean()


def entropy_aux(q: Quantized, *, gamma: float = 1.0, exact: bool = True,
                group_bits: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-token entropy - gamma * codebook entropy, per-token entropy, codebook entropy)."""
    token_h = per_token_entropy(q.logits)
    book_h = codebook_entropy(q.logits, exact=exact, group_bits=group_bits)
    return token_h - gamma * book_h, token_h, book_h
