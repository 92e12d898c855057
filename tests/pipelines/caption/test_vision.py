"""Preprocessing matches what Qwen2.5-VL expects: sizes, patch layout, token counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyratok.pipelines.caption.config import FrameSamplingConfig
from pyratok.pipelines.caption.vision import VisionSpec, frame_budget, smart_resize, target_size, video_to_patches


@pytest.mark.parametrize("height,width", [(720, 1280), (2160, 3840), (4320, 7680), (1080, 1920), (480, 852), (1280, 720), (100, 3000)])
@pytest.mark.parametrize("min_pixels,max_pixels", [(3136, 12544), (64 * 28 * 28, 448 * 448), (3136, 1003520)])
def test_smart_resize_is_transformers_rule(height, width, min_pixels, max_pixels):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf

    ours = smart_resize(height, width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    assert ours == hf(height, width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    assert ours[0] % 28 == 0 and ours[1] % 28 == 0
    if max(height, width) / min(height, width) < 10:  # extreme strips keep one 28-px row, whatever the cap
        assert ours[0] * ours[1] <= max_pixels


def test_patches_match_hf_image_processor_for_a_still_clip():
    """A clip of one repeated frame must patchify exactly like the HF (PIL, torchvision-free) image processor."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(56, 84, 3), dtype=np.uint8)
    spec = VisionSpec()
    ours, grid = video_to_patches(np.stack([frame, frame]), spec)
    hf = Qwen2VLImageProcessorPil(do_resize=False).preprocess([frame], return_tensors="np")
    assert grid == tuple(int(v) for v in hf["image_grid_thw"][0]) == (1, 4, 6)
    np.testing.assert_allclose(ours.numpy(), hf["pixel_values"], rtol=1e-5, atol=1e-5)


def test_patch_rows_follow_the_vision_tower_layout():
    """Row r = (time group, merge window row-major, 2x2 patch inside it); row = (C, t, py, px) pixels."""
    spec = VisionSpec(image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0))
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(4, 56, 112, 3), dtype=np.uint8)
    flat, (gt, gh, gw) = video_to_patches(frames, spec)
    p, m, tp = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    assert (gt, gh, gw) == (2, 4, 8)
    row = 0
    for t in range(gt):
        for bh in range(gh // m):
            for bw in range(gw // m):
                for mh in range(m):
                    for mw in range(m):
                        y, x = (bh * m + mh) * p, (bw * m + mw) * p
                        pix = frames[t * tp : (t + 1) * tp, y : y + p, x : x + p, :]  # (tp, p, p, C)
                        expected = np.transpose(pix, (3, 0, 1, 2)).reshape(-1) / 255.0
                        np.testing.assert_allclose(flat[row].numpy(), expected, atol=1e-6)
                        row += 1
    assert row == flat.shape[0]


def test_odd_frame_count_repeats_the_last_frame():
    frames = np.random.default_rng(2).integers(0, 256, size=(3, 28, 28, 3), dtype=np.uint8)
    flat, grid = video_to_patches(frames, VisionSpec())
    padded, grid4 = video_to_patches(np.concatenate([frames, frames[-1:]]), VisionSpec())
    assert grid == grid4 == (2, 2, 2)
    assert torch.equal(flat, padded)


def test_rejects_sizes_the_model_cannot_take():
    with pytest.raises(ValueError, match="multiple of 28"):
        video_to_patches(np.zeros((2, 30, 56, 3), dtype=np.uint8), VisionSpec())
    with pytest.raises(ValueError, match="T, H, W, 3"):
        video_to_patches(np.zeros((2, 28, 28), dtype=np.uint8), VisionSpec())


def test_total_pixel_budget_shrinks_long_clips():
    cfg = FrameSamplingConfig(min_pixels=3136, max_pixels=448 * 448, total_pixels=8 * 448 * 448)
    spec = VisionSpec()
    assert frame_budget(4, spec, cfg)[1] == 448 * 448
    assert frame_budget(64, spec, cfg)[1] < 448 * 448 // 2
    short = target_size(2160, 3840, 4, spec, cfg)
    long = target_size(2160, 3840, 64, spec, cfg)
    assert long[0] * long[1] < short[0] * short[1]
    assert all(v % 28 == 0 for v in (*short, *long))


def test_spec_and_token_count_agree_with_the_tiny_model(tiny_model):
    """Our patches/grid go through the real vision tower; it yields exactly num_video_tokens embeddings."""
    from transformers import AutoModelForImageTextToText

    spec = VisionSpec.from_pretrained(tiny_model)
    assert (spec.patch_size, spec.merge_size, spec.temporal_patch_size) == (14, 2, 2)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()
    frames = np.random.default_rng(3).integers(0, 256, size=(6, 84, 112, 3), dtype=np.uint8)
    flat, grid = video_to_patches(frames, spec)
    with torch.inference_mode():
        out = model.model.get_video_features(flat, torch.tensor([grid]))
    embeds = torch.cat(out.pooler_output)
    assert embeds.shape == (spec.num_video_tokens(grid), model.config.text_config.hidden_size)
