"""Each KL / alignment term against a value computed by hand on tiny inputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pyratok.model.grid import Grid
from pyratok.model.lapq import LevelOutput
from pyratok.model.lfq import Quantized, all_codes, bits_to_ids, sign_straight_through
from pyratok.model.losses import codebook
from pyratok.model.semantic_head import SemanticHead


def level(logits: torch.Tensor, grid: Grid) -> LevelOutput:
    z = logits / 4
    bits = sign_straight_through(z)
    return LevelOutput(grid=grid, quantized=Quantized(z=z, bits=bits, ids=bits_to_ids(z), logits=logits), out=torch.zeros(0))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def kl(q: float, p: float) -> float:
    return q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))


def test_hierarchical_kl_matches_hand_computation():
    torch.manual_seed(0)
    fine = torch.randn(1, 3, 2, 2, 2)  # frames 0,1,2 on a 2x2 grid, 2 bits
    coarse = torch.randn(1, 2, 1, 1, 2)  # coarse frame 0 <- fine frame 0, coarse frame 1 <- fine frames 1,2
    value = codebook.hierarchical_kl([level(fine, Grid(1, 1)), level(coarse, Grid(2, 2))]).item()
    expected, count = 0.0, 0
    groups = {0: [0], 1: [1, 2]}
    for t, frames in groups.items():
        for bit in range(2):
            parent = sum(sig(fine[0, f, y, x, bit].item()) for f in frames for y in range(2) for x in range(2))
            parent /= 4 * len(frames)
            expected += kl(sig(coarse[0, t, 0, 0, bit].item()), parent)
        count += 1
    assert math.isclose(value, expected / count, rel_tol=1e-5)


def test_text_kl_matches_hand_computation_and_stops_text_gradient():
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 1, 3, 4, requires_grad=True)
    text_logits = torch.randn(2, 4, requires_grad=True)
    value = codebook.text_kl([level(logits, Grid(1, 1))], text_logits)
    expected = 0.0
    for b in range(2):
        for x in range(3):
            expected += sum(kl(sig(logits[b, 0, 0, x, i].item()), sig(text_logits[b, i].item())) for i in range(4))
    assert math.isclose(value.item(), expected / 6, rel_tol=1e-5)
    value.backward()
    assert text_logits.grad is None  # sg(p_t)


def test_text_alignment_is_symmetric_infonce():
    s = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    e = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    temp = 0.5
    value = codebook.text_alignment(s, e, temp).item()
    sim = [[1.0, 0.0], [0.6, 0.8]]  # cosines s_i . e_j (e normalized = identity)
    def ce_rows(m):
        return sum(-m[i][i] / temp + math.log(sum(math.exp(v / temp) for v in m[i])) for i in range(2)) / 2
    transposed = [[sim[j][i] for j in range(2)] for i in range(2)]
    assert math.isclose(value, (ce_rows(sim) + ce_rows(transposed)) / 2, rel_tol=1e-6)


ROWS = [slice(0, 1), slice(1, 3)]


def _alignment_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        s_all, e_all = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
        rows = ROWS[rank]  # one clip on one worker (as at paper scale), two on the other
        s = s_all[rows].clone().requires_grad_(True)
        e = e_all[rows].clone().requires_grad_(True)
        loss = codebook.text_alignment(s, e, 0.2)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad_s": s.grad, "grad_e": e.grad}, f"{out_dir}/rank{rank}.pt")
        # both ranks done before either tears gloo down (a rank closing its pairs while the other is still
        # in them aborts the process: "terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_text_alignment_contrasts_the_batch_of_every_worker(tmp_path):
    """2 gloo workers (1 and 2 clips) = one process on the concatenated batch (a local loss on the 1-clip worker is 0)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_alignment_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    g = torch.Generator().manual_seed(0)
    s_all = torch.randn(3, 8, generator=g).requires_grad_(True)
    e_all = torch.randn(3, 8, generator=g).requires_grad_(True)
    single = codebook.text_alignment(s_all, e_all, 0.2)
    single.backward()
    assert single.item() > 0.01
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.isclose(got["loss"], single.detach(), rtol=1e-6)
        # each worker's loss is the global one, so its rows collect the gradient of both workers' copies;
        # the data-parallel gradient average (/ 2) gives the single-process gradient
        assert torch.allclose(got["grad_s"] / 2, s_all.grad[ROWS[rank]], atol=1e-6)
        assert torch.allclose(got["grad_e"] / 2, e_all.grad[ROWS[rank]], atol=1e-6)


def test_text_code_distribution_equals_softmax_over_all_codes():
    torch.manual_seed(2)
    head = SemanticHead(code_bits=6, text_dim=5)
    e = torch.randn(3, 5)
    temp = 0.3
    per_bit = torch.sigmoid(head.text_code_logits(e, temp))
    codes = all_codes(6)
    brute = torch.softmax(head(codes) @ F.normalize(e, dim=-1).T / temp, dim=0).T  # (3, 64)
    marginal = brute @ ((codes + 1) / 2)
    assert torch.allclose(per_bit, marginal, atol=1e-6)
    # and the product of the per-bit Bernoullis is the whole distribution
    logp = torch.log(torch.where(codes[None] > 0, per_bit[:, None], 1 - per_bit[:, None])).sum(-1)
    assert torch.allclose(logp.exp(), brute, atol=1e-6)


def test_pooled_bits_average_levels_equally():
    a = level(torch.ones(1, 1, 2, 2, 2), Grid(1, 1))  # all +1
    b = level(-torch.ones(1, 1, 1, 1, 2), Grid(2, 1))  # all -1
    assert torch.equal(codebook.pooled_bits([a, b]), torch.zeros(1, 2))


def test_commitment_and_entropy_average_over_levels():
    torch.manual_seed(3)
    levels = [level(torch.randn(1, 1, 2, 2, 8), Grid(1, 1)), level(torch.randn(1, 1, 1, 1, 8), Grid(2, 1))]
    c = codebook.commitment(levels)
    by_hand = sum(((lv.quantized.z - torch.sign(lv.quantized.z)) ** 2).mean() for lv in levels) / 2
    assert torch.isclose(c, by_hand)
    value, stats = codebook.entropy(levels, gamma=1.0, group_bits=8)
    per_level = [stats[f"token_entropy/level{i}"] - stats[f"codebook_entropy/level{i}"] for i in (1, 2)]
    assert torch.isclose(value, sum(per_level) / 2)
