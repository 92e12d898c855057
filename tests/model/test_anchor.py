"""The DINOv3 anchor of drift: tap cells pooled per DINO patch (by hand), heads, 1 - cos against DINO's patch tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyratok.model.anchor import DinoAnchor, axis_membership, cell_of_frame
from pyratok.model.grid import Grid
from tests.model.conftest import build, clip


def test_cells_belong_to_the_patch_their_centre_falls_in_after_dinos_resize_and_crop():
    # 48x80 frame, short side 48 -> 32: width 80 -> round(53.3) = 53, centre crop 32 from column 10.
    # Cell centres at stride 16: 8, 24, 40, 56, 72 px -> x 53/80 - 10 = -4.7, 5.9, 16.5, 27.1, 37.7
    # -> 16 px patches: outside, 0, 1, 1, outside (2 patches per side)
    cols = axis_membership(80, 48, stride=16, image_size=32, patch=16)
    assert cols.tolist() == [[0, 1, 0, 0, 0], [0, 0, 1, 1, 0]]
    # the short side is resized exactly onto the crop: 3 cells of 16 px -> centres 5.3, 16, 26.7 px
    rows = axis_membership(48, 80, stride=16, image_size=32, patch=16)
    assert rows.tolist() == [[1, 0, 0], [0, 1, 1]]
    assert [cell_of_frame(k, 4) for k in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]


def test_patch_sums_and_loss_equal_a_brute_force_pooling():
    torch.manual_seed(0)
    grid = Grid(8, 2)
    tap = torch.randn(2, 5, 5, 6, 10)  # (B, C, t, h, w): 9 frames at 2 frames per cell, 48x80 px at stride 8
    rows = axis_membership(48, 80, stride=8, image_size=32, patch=16)
    cols = axis_membership(80, 48, stride=8, image_size=32, patch=16)
    frames = [0, 4, 8]
    sums = DinoAnchor.patch_sums(tap, frames, grid, 0, rows, cols, 0, 0)
    anchor = DinoAnchor([5], dino_dim=7)
    target = torch.randn(2 * 3, 4, 7)
    loss = anchor.loss([sums], [(rows, cols)], target)
    terms = []
    for b in range(2):
        for fi, k in enumerate(frames):
            t = 0 if k == 0 else 1 + (k - 1) // 2
            for p in range(2):
                for q in range(2):
                    cells = [(y, x) for y in range(6) for x in range(10) if rows[p, y] and cols[q, x]]
                    if not cells:
                        continue
                    mean = torch.stack([tap[b, :, t, y, x] for y, x in cells]).mean(0)
                    feat = anchor.heads[0](mean)
                    terms.append(1 - F.cosine_similarity(feat, target[b * 3 + fi, p * 2 + q], dim=0))
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    # a crop of the same tap (rows 2.., cols 3.., time cells 1..) adds up to the same sums where it has cells
    part = DinoAnchor.patch_sums(tap[:, :, 1:, 2:, 3:], frames, grid, 1, rows, cols, 2, 3)
    rest = DinoAnchor.patch_sums(tap[:, :, 1:, :2, :], frames, grid, 1, rows, cols, 0, 0) \
        + DinoAnchor.patch_sums(tap[:, :, 1:, 2:, :3], frames, grid, 1, rows, cols, 2, 0)
    assert torch.allclose((part + rest)[:, 1:], sums[:, 1:], atol=1e-5)  # frames 4 and 8
    assert ((part + rest)[:, 0] == 0).all() and (sums[:, 0] != 0).any()  # frame 0 is not in the crops' time cells


def test_dino_anchor_needs_dino_and_trains_its_heads():
    model = build("wan2.2", losses={"drift": {"enabled": True, "anchor": "dino"}}).train()
    assert model.dino is not None and model.anchor is not None
    out = model(clip(5, 32, 48, batch=1, seed=4), ["a clip"])
    out.loss.backward()
    assert 0 < out.losses["drift"].item() < 2
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.anchor.heads)
    lora = [p for n, p in model.backbone.named_parameters() if "lora_" in n and p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)  # the taps move with the anchor
    assert all(p.grad is None for p in model.dino.parameters())  # DINO stays frozen


def test_paper_preset_anchors_drift_on_dinov3():
    from pyratok.pipelines.train.stages import load_stage_config

    for stage in (1, 2, 3):
        cfg = load_stage_config("paper", stage, [])
        assert cfg.model.losses.drift.enabled and cfg.model.losses.drift.anchor == "dino", stage
        assert cfg.model.dino.kind == "dinov3" and cfg.model.dino.path
