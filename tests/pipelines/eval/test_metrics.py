"""Eval metrics against independent computations: hand-computed values, brute-force ranks, scipy's sqrtm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from pyratok.model.metrics import CodebookUtilisation
from pyratok.pipelines.eval.features import load_extractor, resample
from pyratok.pipelines.eval.metrics import (
    bits_per_pixel, compression_ratio, frechet_distance, psnr_per_clip, retrieval_recall, ssim_per_clip,
)  # fmt: skip


def test_psnr_of_a_constant_offset_is_hand_computed():
    target = torch.rand(2, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.6  # inside [-0.6, 0.6]
    recon = target.clone()
    recon[0] += 0.2  # 0.1 in [0, 1] units: MSE 0.01 -> 20 dB
    recon[1] -= 0.02  # 0.01: MSE 1e-4 -> 40 dB
    assert torch.allclose(psnr_per_clip(recon, target), torch.tensor([20.0, 40.0]), atol=1e-3)


def test_ssim_of_constant_frames_is_the_luminance_term():
    """Constant frames have no variance: SSIM = (2 a b + C1) / (a² + b² + C1), C1 = 0.01²."""
    a, b = 0.3, 0.7  # in [0, 1]
    target = torch.full((1, 3, 3, 24, 24), 2 * a - 1)
    recon = torch.full((1, 3, 3, 24, 24), 2 * b - 1)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim_per_clip(recon, target).item() == pytest.approx(expected, rel=1e-3)  # float32 window sums
    assert ssim_per_clip(target, target).item() == pytest.approx(1.0, abs=1e-3)


def test_bits_per_pixel_and_compression_by_hand():
    # 9x32x32 clip, 680 tokens of 16 bits: 10880 bits over 9216 pixels; raw 9216 * 24 bits
    assert bits_per_pixel(680, 16, 9, 32, 32) == pytest.approx(10880 / 9216)
    assert compression_ratio(680, 16, 9, 32, 32) == pytest.approx(9216 * 24 / 10880)


def test_frechet_distance_in_one_dimension_is_mean_and_std_gaps():
    a = np.array([[0.0], [2.0], [4.0]])  # mean 2, var 4 (ddof 1)
    b = np.array([[1.0], [1.0], [7.0]])  # mean 3, var 12
    assert frechet_distance(a, b) == pytest.approx((2 - 3) ** 2 + (2 - math.sqrt(12)) ** 2)


def test_frechet_distance_equals_the_sqrtm_formula():
    g = np.random.default_rng(0)
    a = g.normal(size=(64, 6))
    b = g.normal(size=(80, 6)) @ g.normal(size=(6, 6)) + 0.5
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sa @ sb).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * covmean)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def _brute_force_recall(sim: np.ndarray, k: int) -> tuple[float, float]:
    n = len(sim)
    t2v = v2t = 0
    for j in range(n):  # caption j: rank of clip j among all clips (ties count against)
        rank = 1 + sum(1 for i in range(n) if i != j and sim[i, j] >= sim[j, j])
        t2v += rank <= k
    for i in range(n):
        rank = 1 + sum(1 for j in range(n) if j != i and sim[i, j] >= sim[i, i])
        v2t += rank <= k
    return t2v / n, v2t / n


def test_retrieval_recall_equals_brute_force_ranks():
    g = torch.Generator().manual_seed(3)
    text = torch.randn(12, 8, generator=g)
    video = text + 1.5 * torch.randn(12, 8, generator=g)  # noisy pairs: some ranks above 1
    got = retrieval_recall(video, text, [1, 5])
    sim = (torch.nn.functional.normalize(video.double(), dim=-1) @ torch.nn.functional.normalize(text.double(), dim=-1).T).numpy()
    for k in (1, 5):
        t2v, v2t = _brute_force_recall(sim, k)
        assert got[f"t2v/R@{k}"] == pytest.approx(t2v) and got[f"v2t/R@{k}"] == pytest.approx(v2t)
    assert 0 < got["t2v/R@1"] < 1  # the case is not trivial
    same = retrieval_recall(text, text, [1])
    assert same["t2v/R@1"] == same["v2t/R@1"] == 1.0


def test_codebook_counts_from_histograms_equal_counting_the_ids():
    g = torch.Generator().manual_seed(1)
    clips = [[torch.randint(0, 50, (3, 4, 4), generator=g), torch.randint(0, 9, (2, 2, 2), generator=g)] for _ in range(3)]
    direct, from_counts = CodebookUtilisation(6, 2), CodebookUtilisation(6, 2)
    for ids in clips:
        direct.update(ids)
        from_counts.update_counts([torch.unique(level.flatten(), return_counts=True) for level in ids])
    assert from_counts.summary() == direct.summary()
    every = torch.cat([level.flatten() for ids in clips for level in ids])
    assert from_counts.summary()["all/used"] == torch.unique(every).numel()
    assert from_counts.summary()["all/utilisation"] == torch.unique(every).numel() / 64


def test_i3d_torchscript_extractor_calls_the_standard_interface(tmp_path):
    """A scripted stand-in with I3D's call signature: features of the resampled [-1, 1] clip."""

    class TinyI3D(torch.nn.Module):
        def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False):
            assert not rescale and not resize and return_features
            return torch.stack([x.mean(dim=(1, 2, 3, 4)), x.amax(dim=(1, 2, 3, 4))], dim=1)

    path = tmp_path / "i3d.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    extract = load_extractor(f"i3d:{path}", frames=4, size=16)
    video = torch.rand(2, 3, 9, 32, 32) * 2 - 1
    x = resample(video, 4, 16)
    assert x.shape == (2, 3, 4, 16, 16)
    expected = torch.stack([x.mean(dim=(1, 2, 3, 4)), x.amax(dim=(1, 2, 3, 4))], dim=1).double().numpy()
    assert np.allclose(extract(video), expected)


def test_unknown_extractor_is_a_clear_error():
    with pytest.raises(ValueError, match="i3d or videomae"):
        load_extractor("clip:/somewhere", frames=4, size=16)


def test_videomae_extractor_is_the_mean_token_of_the_imagenet_normalised_clip(tmp_path):
    """A tiny random VideoMAE saved locally: features = mean last hidden state of the picked frames, by hand."""
    from transformers import VideoMAEConfig, VideoMAEModel

    torch.manual_seed(0)
    config = VideoMAEConfig(image_size=16, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                            num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    VideoMAEModel(config).eval().save_pretrained(tmp_path / "videomae")
    extract = load_extractor(f"videomae:{tmp_path / 'videomae'}", frames=4, size=16)
    video = torch.rand(2, 3, 9, 16, 16) * 2 - 1  # already 16x16: the resize is the identity
    picked = video[:, :, [0, 3, 5, 8]].transpose(1, 2)  # round(linspace(0, 8, 4)) = 0, 3, 5, 8
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)
    model = VideoMAEModel.from_pretrained(tmp_path / "videomae").eval()
    with torch.no_grad():
        expected = model(pixel_values=((picked + 1) / 2 - mean) / std).last_hidden_state.mean(1).double().numpy()
    assert np.allclose(extract(video), expected, atol=1e-5)
    with pytest.raises(ValueError, match="eval.fvd.frames=4 eval.fvd.size=16"):
        load_extractor(f"videomae:{tmp_path / 'videomae'}", frames=8, size=16)
