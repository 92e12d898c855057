"""Reconstruction (L1, SSIM, LPIPS from torchvision-format weights) and retention (drift, DINOv3/DINOv2) terms."""

from __future__ import annotations

import math

import pytest
import torch

from pyratok.model.checkpoint import persistent_keys
from pyratok.model.config import DinoConfig, LpipsTerm
from pyratok.model.dino import DinoEncoder, sample_frames
from pyratok.model.losses.lpips import Lpips, vgg16_features
from pyratok.model.losses.recon import psnr, ssim, ssim_loss
from pyratok.model.losses.retention import dino_retention, drift
from pyratok.model.presets import TINY_DINO_ARCH
from tests.model.conftest import clip


def test_ssim_and_psnr():
    a = clip(3, 32, 32, seed=1)
    assert math.isclose(ssim(a[0].transpose(0, 1), a[0].transpose(0, 1)).item(), 1.0, abs_tol=1e-5)
    assert ssim_loss(a, a).abs().item() < 1e-5
    noisy = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)
    assert 0 < ssim_loss(noisy, a).item() < 1
    # PSNR on [0, 1]: a uniform offset of 0.2 in [-1, 1] is 0.1 in [0, 1] -> 20 dB
    assert math.isclose(psnr(a * 0 + 0.2, a * 0).item(), 20.0, rel_tol=1e-5)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A torchvision-format VGG16 state dict (random weights, real key names), saved with torch.save."""
    torch.manual_seed(0)
    features = vgg16_features()
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(state, path)
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}
    lin_path = path.parent / "vgg.pth"
    torch.save(lin, lin_path)
    return path, lin_path


def test_lpips_loads_torchvision_weights_and_is_a_distance(vgg_file):
    vgg, lin = vgg_file
    lpips = Lpips.from_files(vgg, lin)
    assert torch.equal(lpips.lins[0].weight, torch.load(lin, weights_only=True)["lin0.model.1.weight"])
    a = clip(2, 32, 32, seed=2)[0].transpose(0, 1)
    b = clip(2, 32, 32, seed=3)[0].transpose(0, 1)
    assert torch.allclose(lpips(a, a), torch.zeros(2), atol=1e-6)
    x = b.clone().requires_grad_(True)
    d = lpips(x, a)
    assert (d > 0).all()
    d.sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in lpips.parameters())


def test_lpips_rejects_other_files_and_is_loudly_off_without_weights(tmp_path, caplog):
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision VGG16"):
        Lpips.from_files(bad)
    from pyratok.core.storage import Storage
    from pyratok.model.tokenizer import build_lpips

    with pytest.warns(UserWarning, match="LPIPS is OFF"):
        assert build_lpips(LpipsTerm(), storage=Storage(), cache_dir=None, base_dir=None) is None
    assert build_lpips(LpipsTerm(enabled=False), storage=Storage(), cache_dir=None, base_dir=None) is None


def test_model_uses_lpips_when_weights_are_configured(vgg_file):
    from tests.model.conftest import build

    vgg, lin = vgg_file
    model = build("wan2.2", losses={"lpips": {"enabled": True, "vgg_weights": str(vgg), "lin_weights": str(lin)}})
    out = model(clip(5, 32, 32), ["x"])
    assert "lpips" in out.losses and out.losses["lpips"].item() > 0
    assert not any(k.startswith("lpips.") for k in persistent_keys(model.state_dict(), model.config))


@pytest.mark.parametrize("kind", ["dinov3", "dinov2"])
def test_dino_wrapper_and_retention_loss(kind):
    arch = dict(TINY_DINO_ARCH)
    if kind == "dinov2":
        arch.pop("intermediate_size")
        arch["mlp_ratio"] = 2
    for features in ("cls", "patch"):
        dino = DinoEncoder.from_config(DinoConfig(kind=kind, arch=arch, image_size=32, features=features, max_frames=3, allow_random=True))
        assert not any(p.requires_grad for p in dino.parameters())
        video = clip(9, 48, 64, batch=2)
        feats = dino.video_features(video)
        n = 2 * len(sample_frames(9, 3))
        assert feats.shape[0] == n and (feats.dim() == 2 if features == "cls" else feats.dim() == 3)
        assert dino_retention(feats, feats).abs().item() < 1e-5
        recon = video.clone().requires_grad_(True)
        loss = dino_retention(dino.video_features(recon.flip(-1)), feats)
        loss.backward()
        assert loss.item() > 0 and recon.grad.abs().sum() > 0
    assert sample_frames(9, 3).tolist() == [0, 4, 8] and sample_frames(2, 8).tolist() == [0, 1]


def test_preprocess_resizes_short_side_and_normalizes():
    dino = DinoEncoder.from_config(DinoConfig(arch=TINY_DINO_ARCH, image_size=32, allow_random=True))
    x = dino.preprocess(torch.zeros(2, 3, 48, 96))  # mid grey
    assert x.shape == (2, 3, 32, 32)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[0, :, 0, 0], expected, atol=1e-5)


def test_drift_is_the_mean_over_taps_of_the_mse_to_the_frozen_taps_without_their_gradient():
    a = [torch.randn(2, 4, 3, requires_grad=True), torch.randn(2, 8, 1, requires_grad=True)]
    b = [torch.randn(2, 4, 3, requires_grad=True), torch.randn(2, 8, 1, requires_grad=True)]
    value = drift(a, b)
    by_hand = (((a[0] - b[0]) ** 2).sum() / 24 + ((a[1] - b[1]) ** 2).sum() / 16) / 2
    assert torch.isclose(value, by_hand)
    value.backward()
    assert all(t.grad is None for t in b) and all(t.grad is not None for t in a)


def test_a_missing_dino_path_is_refused_unless_random_is_allowed_and_only_tiny_presets_allow_it():
    from pyratok.config import load

    with pytest.raises(ValueError, match="model.dino.path is not set"):
        DinoEncoder.from_config(DinoConfig(arch=TINY_DINO_ARCH, image_size=32))
    assert load("local").model.dino.allow_random
    for preset in ("cluster", "paper"):
        assert not load(preset).model.dino.allow_random, preset
    assert load("paper").model.dino.path  # the paper preset names its DINOv3 weights
    # a cluster run of stage 3 without DINO weights fails at model build, naming the setting
    from pyratok.model.presets import production

    cfg = production("wan2.2")
    assert cfg.dino.path is None and not cfg.dino.allow_random
