"""AR head: aligned budgeted window, <Q-SEP> sequence, 16-bit BCE, gradients into the quantizer bits; HF backbone."""

from __future__ import annotations

import math

import pytest
import torch

from pyratok.model.ar_head import ArHead, CausalTransformer, HfCausalBackbone
from pyratok.model.ar_window import choose_window, worst_case_tokens
from pyratok.model.config import ArHeadConfig
from pyratok.model.grid import Grid
from pyratok.model.lfq import sign_straight_through
from pyratok.model.text_encoder import TextEmbedding

GRIDS = [Grid(4, 1), Grid(8, 2), Grid(16, 4), Grid(16, 4)]


def level_bits(frames=9, height=64, width=96, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for grid in GRIDS:
        z = torch.randn(batch, *grid.shape(frames, height, width), 16, generator=g, requires_grad=True)
        out.append(z)
    return out


def text(batch=2, length=5, dim=12):
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False
    tokens = torch.randn(batch, length, dim)
    return TextEmbedding(tokens=tokens, mask=mask, pooled=tokens.mean(1))


@pytest.mark.parametrize("budget", [74, 150, 600, 10_000])
def test_window_is_aligned_and_within_budget(budget):
    coarse = GRIDS[-1].shape(9, 64, 96)  # (3, 4, 6)
    for seed in range(5):
        window = choose_window(coarse, GRIDS, budget, generator=torch.Generator().manual_seed(seed))
        size = tuple(b - a for a, b in (window.frames, window.rows, window.cols))
        assert worst_case_tokens(size, GRIDS) <= budget
        assert all(0 <= a < b <= n for (a, b), n in zip((window.frames, window.rows, window.cols), coarse))
        for grid in GRIDS:
            ts, ys, xs = window.level_slices(grid, GRIDS[-1])
            f_t, f_s = grid.ratio_to(GRIDS[-1])
            # same pixels at every level
            assert (ys.start * grid.stride, ys.stop * grid.stride) == (window.rows[0] * 16, window.rows[1] * 16)
            assert (xs.start * grid.stride, xs.stop * grid.stride) == (window.cols[0] * 16, window.cols[1] * 16)
            lo = 0 if window.frames[0] == 0 else 1 + f_t * (window.frames[0] - 1)
            assert (ts.start, ts.stop) == (lo, 1 + f_t * (window.frames[1] - 1))
    if budget >= worst_case_tokens(coarse, GRIDS):
        full = choose_window(coarse, GRIDS, budget)
        assert (full.frames, full.rows, full.cols) == ((0, 3), (0, 4), (0, 6))


def test_budget_below_one_cell_is_rejected():
    with pytest.raises(ValueError, match="smaller than one coarse cell"):
        choose_window((3, 4, 6), GRIDS, 73)


def make_head(max_text=4, budget=200):
    cfg = ArHeadConfig(dim=32, layers=2, heads=4, token_budget=budget, max_text_tokens=max_text)
    backbone = CausalTransformer(dim=32, layers=2, heads=4, mlp_ratio=2, dropout=0)
    return ArHead(cfg=cfg, code_bits=16, text_dim=12, num_levels=4, backbone=backbone)


def test_loss_is_per_token_sum_of_bit_bces_and_reaches_the_bits():
    torch.manual_seed(0)
    head = make_head().eval()
    zs = level_bits()
    bits = [sign_straight_through(z) for z in zs]
    result = head(bits, GRIDS, text())
    assert result.tokens <= 200
    # an untrained head predicts ~0.5 per bit: about 16 ln 2 nats per token
    assert abs(result.loss.item() - 16 * math.log(2)) < 3
    result.loss.backward()
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in zs)


def test_causal_transformer_does_not_look_ahead():
    torch.manual_seed(0)
    head = make_head(max_text=0).eval()
    mask = torch.ones(1, 5, dtype=torch.bool)
    seq = torch.randn(1, 5, 32)
    later_changed = seq.clone()
    later_changed[:, 3:] += torch.randn(1, 2, 32)  # not a constant shift: the pre-norm blocks remove those
    out_a, out_b = head.backbone(seq, mask), head.backbone(later_changed, mask)
    assert torch.allclose(out_a[:, :3], out_b[:, :3], atol=1e-6)
    assert not torch.allclose(out_a[:, 3:], out_b[:, 3:])
    # a padded key is invisible to everyone else
    padded = mask.clone()
    padded[0, 1] = False
    noisy = seq.clone()
    noisy[:, 1] += 5
    out_c, out_d = head.backbone(seq, padded), head.backbone(noisy, padded)
    assert torch.allclose(out_c[:, 2:], out_d[:, 2:], atol=1e-6)


def test_left_padded_text_prefix_ends_right_before_bos():
    head = make_head(max_text=4)
    emb = text(length=5)
    prefix, valid = head._text_prefix(emb, 2, torch.device("cpu"))
    assert prefix.shape[:2] == (2, 4)
    assert valid[0].tolist() == [False, True, True, True] and valid[1].all()
    assert torch.allclose(prefix[0, 1:], head.text_in(emb.tokens[0, :3]))


def test_hf_causal_lm_backbone(tmp_path):
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    lm = Qwen2Model(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512))
    cfg = ArHeadConfig(backend="hf", token_budget=200, max_text_tokens=4)
    head = ArHead(cfg=cfg, code_bits=16, text_dim=12, num_levels=4, backbone=HfCausalBackbone(lm, trainable=False))
    zs = level_bits()
    result = head([sign_straight_through(z) for z in zs], GRIDS, text())
    result.loss.backward()
    assert torch.isfinite(result.loss)
    assert all(p.grad is None for p in lm.parameters())  # frozen LM
    assert head.bits_in.weight.grad is not None and zs[0].grad is not None


class _Identity(torch.nn.Module):
    """A backbone whose state at each position is that position's input: causal by construction."""

    has_positions = True
    dim = 32

    def forward(self, x, mask):
        return x


def test_each_token_is_predicted_from_the_state_right_before_it():
    """Shift alignment, by hand: with an identity backbone and a read-out that copies a token's own bits, the
    loss is the BCE of each token against the bits of what precedes it (<BOS>, <Q-SEP>, or the previous
    token). A head that predicted a token from its own position would score ~0 here."""
    torch.manual_seed(3)
    cfg = ArHeadConfig(dim=32, layers=1, heads=4, token_budget=64, max_text_tokens=0)
    head = ArHead(cfg=cfg, code_bits=16, text_dim=12, num_levels=2, backbone=_Identity()).eval()
    with torch.no_grad():
        head.bits_in.weight.zero_()
        head.bits_in.weight[:16] = torch.eye(16)
        head.bits_in.bias.zero_()
        head.bits_out.weight.zero_()
        head.bits_out.weight[:, :16] = 10 * torch.eye(16)
        head.bits_out.bias.zero_()
        head.level_embed.zero_()
        head.bos.copy_(torch.randn(32))
        head.sep.copy_(torch.randn(32))
    window_bits = [torch.randn(1, 1, 2, 2, 16).sign(), torch.randn(1, 1, 1, 3, 16).sign()]
    result = head.forward_window(window_bits, None, None)

    sequence = [head.bos[:16]] + list(window_bits[0].reshape(-1, 16)) + [head.sep[:16]] + list(window_bits[1].reshape(-1, 16))
    targets = list(window_bits[0].reshape(-1, 16)) + list(window_bits[1].reshape(-1, 16))
    before = [0, 1, 2, 3, 5, 6, 7]  # index in `sequence` of what precedes each target (the <Q-SEP> before level 2)
    losses = [torch.nn.functional.binary_cross_entropy_with_logits(10 * sequence[i], (t > 0).float(), reduction="sum")
              for i, t in zip(before, targets)]
    expected = torch.stack(losses).mean()
    assert result.tokens == 7
    assert torch.isclose(result.loss, expected, rtol=1e-5)
    copy = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(10 * t, (t > 0).float(), reduction="sum")
                        for t in targets]).mean()
    assert copy < 1e-3 < result.loss  # the mutant's loss, for contrast


def test_windows_of_the_paper_budget_cover_a_whole_512px_97_frame_clip_over_steps():
    """At the paper's 2,048-token budget one window is 3x3x3 coarse cells (48x48 px x 12 frames: 0.1 % of a
    97x512x512 clip's tokens), drawn anywhere each step. Every cell is reachable, each is drawn as often as the
    start positions covering it say (hand-computed per axis), and 50,000 draws (~100 steps of a 128-GPU stage at
    4 clips per GPU) leave no cell unseen but a few in the corners."""
    coarse = GRIDS[-1].shape(97, 512, 512)
    assert coarse == (25, 32, 32)
    draws = 50_000
    g = torch.Generator().manual_seed(0)
    hits = torch.zeros(coarse, dtype=torch.int32)
    for _ in range(draws):
        w = choose_window(coarse, GRIDS, 2048, generator=g, random=True)
        hits[w.frames[0]:w.frames[1], w.rows[0]:w.rows[1], w.cols[0]:w.cols[1]] += 1
    size = (3, 3, 3)

    def axis_probability(i: int, n: int, k: int) -> float:  # starts s in [0, n-k] with s <= i < s + k
        return (min(i, n - k) - max(0, i - k + 1) + 1) / (n - k + 1)

    for cell in [(12, 16, 16), (0, 0, 0), (24, 31, 0), (1, 1, 30)]:
        p = math.prod(axis_probability(i, n, k) for i, n, k in zip(cell, coarse, size))
        mean, sd = draws * p, math.sqrt(draws * p * (1 - p))
        assert abs(int(hits[cell]) - mean) <= 5 * sd + 1, (cell, int(hits[cell]), mean)
    assert (hits > 0).float().mean() > 0.99
