"""Masking: 30% of frames (never frame 0), per-frame patch masking on a cosine schedule, target untouched."""

from __future__ import annotations

import math

import pytest
import torch

from pyratok.model.config import MaskingConfig
from pyratok.model.masking import apply_mask, masked_frame_count, spatial_ratio


def test_frame_masking_ratio_and_frame_zero_kept():
    cfg = MaskingConfig(frame_ratio=0.3, spatial_max_ratio=0.0)
    video = torch.rand(8, 3, 17, 32, 32) * 2 - 1
    out = apply_mask(video, cfg, patch=16, progress=0.0, generator=torch.Generator().manual_seed(0))
    assert masked_frame_count(17, 0.3) == 5
    assert torch.equal(out.frames.sum(1), torch.full((8,), 5))
    assert not out.frames[:, 0].any()
    assert torch.equal(out.video[:, :, 0], video[:, :, 0])
    assert (out.video.transpose(1, 2)[out.frames] == 0).all()  # fill value
    kept = ~out.frames
    assert torch.equal(out.video.transpose(1, 2)[kept], video.transpose(1, 2)[kept])
    # different clips get different frames
    assert len({tuple(row.tolist()) for row in out.frames}) > 1


@pytest.mark.parametrize("progress", [0.0, 0.5, 0.9, 1.0])
def test_spatial_ratio_follows_the_cosine_schedule(progress):
    cfg = MaskingConfig(frame_ratio=0.0, spatial_max_ratio=0.5)
    expected = 0.5 * math.cos(math.pi / 2 * progress)
    assert math.isclose(spatial_ratio(cfg, progress), expected, abs_tol=1e-12)
    video = torch.rand(2, 3, 5, 64, 64)
    out = apply_mask(video, cfg, patch=16, progress=progress, generator=torch.Generator().manual_seed(1))
    per_frame = out.patches.flatten(2).float().mean(-1)  # (B, T)
    assert torch.equal(per_frame[:, 0], torch.zeros(2))  # the key frame is never patch-masked
    assert torch.allclose(per_frame[:, 1:], torch.full_like(per_frame[:, 1:], round(expected * 16) / 16))
    pixels = (out.video != video).float().mean().item()
    assert math.isclose(pixels, round(expected * 16) / 16 * 4 / 5, abs_tol=1e-6)


def test_model_masks_only_in_training_and_reconstructs_the_unmasked_target(tiny22):
    from tests.model.conftest import clip

    video = clip(9, 32, 32)
    assert not tiny22.training
    out = tiny22(video, ["x"])
    assert "mask/frame_ratio" not in out.metrics
    tiny22.train()
    try:
        out = tiny22(video, ["x"], progress=0.0)
    finally:
        tiny22.eval()
    assert math.isclose(out.metrics["mask/frame_ratio"], 3 / 9, rel_tol=1e-6)
    assert math.isclose(out.metrics["mask/spatial_ratio"], 0.5, rel_tol=1e-6)
    # the reconstruction loss compares with the clean clip
    from pyratok.model.losses.recon import l1

    assert torch.isclose(out.losses["l1"], l1(out.recon, video))
