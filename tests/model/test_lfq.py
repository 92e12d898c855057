"""Binary LFQ: ids, straight-through, and the factorized entropies against brute force over every code."""

from __future__ import annotations

import math

import torch

from pyratok.model.lfq import (
    BinaryQuantizer,
    all_codes,
    bernoulli_entropy,
    bits_to_ids,
    codebook_entropy,
    commitment,
    entropy_aux,
    group_code_log_probs,
    ids_to_bits,
    per_token_entropy,
)


def test_ids_bits_round_trip_over_the_whole_16_bit_space():
    ids = torch.arange(2**16)
    bits = ids_to_bits(ids, 16)
    assert set(bits.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(bits_to_ids(bits), ids)
    # bit i is worth 2^i
    assert bits_to_ids(torch.tensor([[1.0] + [-1.0] * 15]))[0] == 1
    assert bits_to_ids(torch.tensor([[-1.0] * 15 + [1.0]]))[0] == 2**15


def test_quantizer_outputs_exact_signs_and_straight_through_gradient():
    torch.manual_seed(0)
    x = torch.randn(4, 7, 16, requires_grad=True)
    q = BinaryQuantizer(code_bits=16)(x)
    assert set(q.bits.detach().unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(q.bits.detach(), torch.where(q.z > 0, 1.0, -1.0))
    assert torch.equal(q.ids, bits_to_ids(q.z))
    # z is GroupNorm'ed without affine: zero mean, unit variance per token
    assert torch.allclose(q.z.mean(-1), torch.zeros(4, 7), atol=1e-5)
    w = torch.randn(16)
    (q.bits * w).sum().backward()
    # straight-through: d bits / d z = identity, so x.grad = (d z / d x)^T w, same as backprop through z
    x2 = x.detach().clone().requires_grad_(True)
    (BinaryQuantizer(code_bits=16)(x2).z * w).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)
    assert x.grad.abs().sum() > 0


def brute_force_probs(z: torch.Tensor, tau: float) -> torch.Tensor:
    """softmax over all codes of -tau ||z - c||^2 (the LFQ soft assignment), (N, 2^bits)."""
    codes = all_codes(z.shape[-1])
    return torch.softmax(-tau * torch.cdist(z, codes).pow(2), dim=-1)


def test_per_bit_posterior_equals_softmax_over_all_codes():
    torch.manual_seed(1)
    tau = 0.7
    z = torch.randn(32, 8)
    q = BinaryQuantizer(code_bits=8, inv_temperature=tau)(z)
    factorized = group_code_log_probs(q.logits).exp()
    assert torch.allclose(factorized, brute_force_probs(q.z, tau), atol=1e-6)
    # marginal of bit i under the softmax = sigmoid(4 tau z_i)
    brute = brute_force_probs(q.z, tau)
    marginal = brute @ ((all_codes(8) + 1) / 2)
    assert torch.allclose(marginal, torch.sigmoid(q.logits), atol=1e-6)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def test_bit_grouped_entropies_equal_brute_force_at_8_bits():
    torch.manual_seed(2)
    tau = 0.5
    q = BinaryQuantizer(code_bits=8, inv_temperature=tau)(torch.randn(64, 8))
    brute = brute_force_probs(q.z, tau)
    assert math.isclose(per_token_entropy(q.logits).item(), entropy(brute).mean().item(), rel_tol=1e-5)
    # one group of all 8 bits: the codebook entropy is exact
    assert math.isclose(codebook_entropy(q.logits, 8).item(), entropy(brute.mean(0)).item(), rel_tol=1e-5)
    # two groups of 4: the sum of the groups' exact marginal entropies
    codes = all_codes(8)
    ids_low = bits_to_ids(codes[:, :4])
    ids_high = bits_to_ids(codes[:, 4:])
    avg = brute.mean(0)
    low = torch.zeros(16).index_add_(0, ids_low, avg)
    high = torch.zeros(16).index_add_(0, ids_high, avg)
    grouped = codebook_entropy(q.logits, 4).item()
    assert math.isclose(grouped, (entropy(low) + entropy(high)).item(), rel_tol=1e-5)
    assert grouped >= entropy(avg).item() - 1e-5  # marginals bound the joint from above


def test_entropy_aux_and_commitment_values():
    torch.manual_seed(3)
    q = BinaryQuantizer(code_bits=8)(torch.randn(10, 8))
    total, token_h, book_h = entropy_aux(q, gamma=0.5, group_bits=8)
    assert torch.isclose(total, token_h - 0.5 * book_h)
    assert torch.isclose(token_h, bernoulli_entropy(q.logits).sum(-1).mean())
    assert torch.isclose(commitment(q), ((q.z - torch.sign(q.z)) ** 2).mean())


def test_entropies_never_materialize_the_full_codebook():
    """16 bits over 8K tokens: no op allocates more than tokens x 256 floats (a 65,536-wide tensor would be 2 GiB)."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(8192, 16, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        q = BinaryQuantizer(code_bits=16)(x)
        loss, _, _ = entropy_aux(q, gamma=1.0, group_bits=8)
        loss.backward()
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert largest <= 8192 * 256 * 4
    assert torch.isfinite(loss) and x.grad.abs().sum() > 0
    # 16 independent fair bits: codebook entropy 16 ln 2, exactly reachable with 2 groups of 8
    assert math.isclose(codebook_entropy(torch.zeros(4, 16), 8).item(), 16 * math.log(2), rel_tol=1e-6)
