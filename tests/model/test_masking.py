"""Masking (Appendix B): 30% of frames (never frame 0), MaskGIT's per-sample cosine spatial ratio on every frame."""

from __future__ import annotations

import math

import torch

from pyratok.model.config import MaskingConfig
from pyratok.model.masking import apply_mask, draw_mask, masked_frame_count


def test_frame_masking_ratio_and_frame_zero_kept():
    cfg = MaskingConfig(frame_ratio=0.3, spatial_max_ratio=0.0)
    video = torch.rand(8, 3, 17, 32, 32) * 2 - 1
    out = apply_mask(video, cfg, patch=16, generator=torch.Generator().manual_seed(0))
    assert masked_frame_count(17, 0.3) == 5
    assert torch.equal(out.frames.sum(1), torch.full((8,), 5))
    assert not out.frames[:, 0].any()
    assert torch.equal(out.video[:, :, 0], video[:, :, 0])
    assert (out.video.transpose(1, 2)[out.frames] == 0).all()  # fill value
    kept = ~out.frames
    assert torch.equal(out.video.transpose(1, 2)[kept], video.transpose(1, 2)[kept])
    # different clips get different frames
    assert len({tuple(row.tolist()) for row in out.frames}) > 1


def test_spatial_ratio_is_drawn_per_sample_from_maskgits_cosine_schedule():
    """P(ratio <= x) = P(cos(pi/2 r) <= x) = 1 - (2/pi) arccos(x) for r ~ U(0, 1): checked on 4,000 draws."""
    cfg = MaskingConfig(frame_ratio=0.0)
    drawn = draw_mask((4000, 3, 1, 16, 16), cfg, patch=16, generator=torch.Generator().manual_seed(3))
    ratios = drawn.spatial_ratio.double().sort().values
    empirical = torch.arange(1, 4001, dtype=torch.float64) / 4000
    cdf = 1 - 2 / math.pi * torch.arccos(ratios.clamp(0, 1))
    assert (empirical - cdf).abs().max() < 0.03  # Kolmogorov-Smirnov, ~1.36/sqrt(n) = 0.0215 at 5 %
    assert ratios.mean().item() > 0.6  # E[cos(pi/2 r)] = 2/pi: heavy masking on average, whatever the step


def test_every_frame_gets_its_samples_ratio_of_patches_frame_zero_included():
    cfg = MaskingConfig(frame_ratio=0.0)
    video = torch.rand(6, 3, 5, 64, 64) * 2 - 1
    out = apply_mask(video, cfg, patch=16, generator=torch.Generator().manual_seed(1))
    per_frame = out.patches.flatten(2).float().mean(-1)  # (B, T): fraction of each frame's 16 patches
    expected = torch.round(out.spatial_ratio * 16) / 16
    assert torch.allclose(per_frame, expected[:, None].expand(6, 5))
    assert len(set(expected.tolist())) > 1  # the ratio differs between samples
    # frames draw their own patches (not one pattern repeated over time)
    busy = int(expected.argmax())
    if 0 < expected[busy] < 1:
        assert len({tuple(f.flatten().tolist()) for f in out.patches[busy]}) > 1
    # masked patches are filled, the rest untouched
    pixel = out.patches.repeat_interleave(16, 2).repeat_interleave(16, 3)[:, None].expand_as(video)
    assert (out.video[pixel] == 0).all() and torch.equal(out.video[~pixel], video[~pixel])


def test_model_masks_only_in_training_and_reconstructs_the_unmasked_target(tiny22):
    from tests.model.conftest import clip

    video = clip(9, 32, 32)
    assert not tiny22.training
    out = tiny22(video, ["x"])
    assert "mask/frame_ratio" not in out.metrics
    tiny22.train()
    try:
        torch.manual_seed(5)
        out = tiny22(video, ["x"], progress=0.0)
        torch.manual_seed(5)
        drawn = draw_mask(tuple(video.shape), tiny22.config.masking, patch=tiny22.spatial_multiple)
    finally:
        tiny22.eval()
    # round(frame_ratio x 9) frames blanked: 1 of 9 at the tiny preset's 0.1 (3 at the paper's 0.3)
    expected_frames = round(tiny22.config.masking.frame_ratio * 9)
    assert expected_frames == 1 and drawn.frames.sum().item() == expected_frames * video.shape[0]
    assert math.isclose(out.metrics["mask/frame_ratio"], expected_frames / 9, rel_tol=1e-6)
    assert math.isclose(out.metrics["mask/spatial_ratio"], drawn.spatial_ratio.mean().item(), rel_tol=1e-6)
    # the reconstruction loss compares with the clean clip
    from pyratok.model.losses.recon import l1

    assert torch.isclose(out.losses["l1"], l1(out.recon, video))
