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


def brute_force_code_probs(logits: torch.Tensor) -> torch.Tensor:
    """(N, 2^bits): each token's probability of every code, prod_i sigmoid(c_i a_i), one column per code."""
    codes = all_codes(logits.shape[-1])
    return torch.nn.functional.logsigmoid(logits[:, None, :] * codes[None]).sum(-1).exp()


def test_per_token_entropy_equals_brute_force_at_8_bits():
    torch.manual_seed(2)
    tau = 0.5
    q = BinaryQuantizer(code_bits=8, inv_temperature=tau)(torch.randn(64, 8))
    brute = brute_force_probs(q.z, tau)
    assert math.isclose(per_token_entropy(q.logits).item(), entropy(brute).mean().item(), rel_tol=1e-5)


def test_codebook_entropy_is_exact_over_all_65536_codes_with_its_gradient():
    torch.manual_seed(4)
    logits = (torch.randn(48, 16) * 1.5).requires_grad_(True)
    exact = codebook_entropy(logits)
    logits_b = logits.detach().clone().requires_grad_(True)
    brute = entropy(brute_force_code_probs(logits_b).mean(0))
    assert math.isclose(exact.item(), brute.item(), rel_tol=1e-5)
    exact.backward()
    brute.backward()
    assert torch.allclose(logits.grad, logits_b.grad, rtol=1e-4, atol=1e-7)


def test_codebook_entropy_of_a_collapsed_batch_is_low_where_the_grouped_bound_is_at_its_maximum():
    """256 tokens, each (almost surely) one code whose high byte repeats its low byte: 256 of the 65,536 codes used.

    Each byte alone is uniform over its 256 values, so the grouped bound reads 16 ln 2 = 11.09 nats; the
    batch's real codebook entropy is ln 256 = 5.55 nats.
    """
    low = ids_to_bits(torch.arange(256), 8)
    logits = 40.0 * torch.cat([low, low], dim=-1)  # near-deterministic bits
    brute = entropy(brute_force_code_probs(logits).mean(0)).item()
    assert math.isclose(brute, math.log(256), rel_tol=1e-4)
    assert math.isclose(codebook_entropy(logits).item(), brute, rel_tol=1e-4)
    grouped = codebook_entropy(logits, exact=False, group_bits=8).item()
    assert math.isclose(grouped, 16 * math.log(2), rel_tol=1e-4)


def test_grouped_codebook_entropy_is_the_sum_of_group_marginals_and_bounds_the_exact_one():
    torch.manual_seed(2)
    logits = torch.randn(64, 8) * 2
    avg = brute_force_code_probs(logits).mean(0)
    codes = all_codes(8)
    low = torch.zeros(16).index_add_(0, bits_to_ids(codes[:, :4]), avg)
    high = torch.zeros(16).index_add_(0, bits_to_ids(codes[:, 4:]), avg)
    grouped = codebook_entropy(logits, exact=False, group_bits=4).item()
    assert math.isclose(grouped, (entropy(low) + entropy(high)).item(), rel_tol=1e-5)
    assert grouped > codebook_entropy(logits).item() + 1e-3  # a strict bound on correlated bits


def test_entropy_aux_and_commitment_values():
    torch.manual_seed(3)
    q = BinaryQuantizer(code_bits=8)(torch.randn(10, 8))
    total, token_h, book_h = entropy_aux(q, gamma=0.5)
    assert torch.isclose(total, token_h - 0.5 * book_h)
    assert torch.isclose(token_h, bernoulli_entropy(q.logits).sum(-1).mean())
    assert torch.isclose(book_h, entropy(brute_force_code_probs(q.logits).mean(0)), rtol=1e-5)
    assert torch.isclose(commitment(q), ((q.z - torch.sign(q.z)) ** 2).mean())


def test_entropies_never_materialize_the_full_codebook():
    """16 bits over 8K tokens: no op allocates more than two tokens x 256 float tensors (the joint's matmul backward
    returns both halves' gradients); a 65,536-wide tensor would be 2 GiB, 128x that."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(8192, 16, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        q = BinaryQuantizer(code_bits=16)(x)
        loss, _, _ = entropy_aux(q, gamma=1.0)
        loss.backward()
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert largest <= 2 * 8192 * 256 * 4
    assert torch.isfinite(loss) and x.grad.abs().sum() > 0
    # 16 independent fair bits: every code equally likely, codebook entropy 16 ln 2
    assert math.isclose(codebook_entropy(torch.zeros(4, 16)).item(), 16 * math.log(2), rel_tol=1e-6)
