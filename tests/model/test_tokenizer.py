"""PyraTok end to end: named/weighted/switchable losses, frozen parts, save/load (local + S3), training steps."""

from __future__ import annotations

import math

import json

import pytest
import torch

from pyratok.model.config import LOSS_TERMS
from tests.model.conftest import build, clip

DEFAULT_ACTIVE = {"l1", "ssim", "commitment", "entropy", "hier_kl", "text_kl", "text_align", "ar", "drift"}


@pytest.fixture(scope="module")
def model():
    """A tiny model this module may train (not the shared eval fixture)."""
    return build("wan2.2", masking={"enabled": False})


def test_output_losses_are_named_weighted_and_summed(tiny22):
    out = tiny22(clip(5, 32, 48, batch=2), ["a dog", "a cat"])
    assert set(out.losses) == DEFAULT_ACTIVE and set(out.losses) <= set(LOSS_TERMS)
    lc = tiny22.config.losses
    for name, value in out.losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    assert torch.isclose(out.loss, sum(out.weighted.values()))
    assert lc.effective_weight("l1") == 2.5 and lc.effective_weight("ar") == 1.5 and lc.effective_weight("drift") == 0.6
    assert lc.effective_weight("commitment") == 2.5 * 0.25
    for level, ids in enumerate(out.pyramid.levels, start=1):  # usage and perplexity against a count by hand
        values = ids.flatten().tolist()
        counts = [values.count(v) for v in set(values)]
        assert math.isclose(out.metrics[f"codebook_usage/level{level}"], len(counts) / min(len(values), 2**16),
                            rel_tol=1e-6)
        entropy = -sum(c / len(values) * math.log(c / len(values)) for c in counts)
        assert math.isclose(out.metrics[f"perplexity/level{level}"], math.exp(entropy), rel_tol=1e-4)
    assert out.recon.shape == (2, 3, 5, 32, 48) and out.pyramid.num_tokens > 0
    # drift is exactly 0 while the LoRA adapters are still the identity
    assert out.losses["drift"].item() == 0.0


def test_terms_switch_off_and_dino_needs_the_model(tiny22):
    lc = tiny22.config.losses
    try:
        lc.ar.enabled = False
        lc.text_kl.weight = 0.0
        out = tiny22(clip(5, 32, 32), ["x"])
        assert "ar" not in out.losses and out.weighted["text_kl"].item() == 0.0
        lc.dino.enabled = True
        with pytest.raises(ValueError, match="without DINO"):
            tiny22(clip(5, 32, 32), ["x"])
    finally:
        lc.ar.enabled, lc.text_kl.weight, lc.dino.enabled = True, 0.1, False


def test_only_adapters_lapq_and_heads_train_frozen_parts_get_no_grad(model):
    model.train()
    model.zero_grad(set_to_none=True)
    model(clip(5, 32, 32, batch=2), ["a", "b"]).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for n, p in model.named_parameters() if n in trainable}
    for name, p in model.named_parameters():
        frozen = name.startswith(("text_encoder.", "dino.", "lpips.")) or (name.startswith("backbone.vae.") and "lora_" not in name)
        assert p.requires_grad == (not frozen), name
        if frozen:
            assert p.grad is None, name
    prefixes = ("backbone.vae.encoder.", "lapq.", "semantic_head.", "fusion.", "ar_head.")
    assert all(n.startswith(prefixes) for n in trainable)
    # every trainable tensor receives a gradient, one by one: every LoRA layer's B (A's gradient is B^T(...),
    # exactly 0 while B is zero-initialised) and every parameter of every LaPQ level, fusion and head
    lora_b = [n for n in trainable if "lora_B" in n]
    assert len(lora_b) == len([n for n in trainable if "lora_A" in n]) > 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, name
        if "lora_A" in name:
            assert p.grad.abs().sum() == 0, name
        else:
            assert p.grad.abs().sum() > 0, name
    levels = {n.split(".")[2] for n in trainable if n.startswith("lapq.levels.")}
    assert levels == {str(i) for i in range(len(model.lapq.grids))}


def test_a_few_steps_reduce_the_loss_and_keep_codes_in_use(model):
    torch.manual_seed(0)
    model.train()
    video, texts = clip(5, 32, 48, batch=2, seed=7), ["red waves", "blue sky"]
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(video, texts, progress=0.5)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0], losses
    for level in range(1, 5):
        assert out.metrics[f"codebook_usage/level{level}"] >= 0.05, out.metrics
    assert out.losses["drift"].item() > 0  # the adapters moved


def test_save_and_load_give_identical_tokens(model, tmp_path):
    model.eval()
    video = clip(5, 32, 48, seed=9)
    tokens = model.encode(video, ["same text"])
    model.save_pretrained(str(tmp_path / "ckpt"))
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "model.safetensors", "vae"]  # the random tiny base is saved, MiniLM referenced
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["model"]["backbone"]["path"] == "vae" and meta["model"]["text_encoder"]["path"] == "sentence-transformers/all-MiniLM-L6-v2"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any(k.startswith("text_encoder.") for k in keys)
    assert all("lora_" in k for k in keys if k.startswith("backbone."))
    from pyratok.model.tokenizer import PyraTok

    loaded = PyraTok.from_pretrained(str(tmp_path / "ckpt")).eval()
    assert loaded.encode(video, ["same text"]).equal(tokens)
    assert torch.allclose(loaded.decode(tokens), model.decode(tokens), atol=1e-5)
    # a stage switch: overrides merge into the saved config; the relative base is copied along on re-save
    stage3 = PyraTok.from_pretrained(str(tmp_path / "ckpt"), losses={"dino": {"enabled": True}})
    assert stage3.dino is not None and stage3.config.losses.dino.enabled
    stage3.save_pretrained(str(tmp_path / "again"))
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["config.json", "dino", "model.safetensors", "vae"]
    with pytest.raises(ValueError, match="does not match|do not match"):
        PyraTok.from_pretrained(str(tmp_path / "ckpt"), lapq={"dim": 64, "heads": 4})


@pytest.mark.integration
def test_save_and_load_through_s3(model, s3_bucket, s3_storage, tmp_path, monkeypatch):
    from pyratok.model.tokenizer import PyraTok

    monkeypatch.setenv("PYRATOK_CACHE", str(tmp_path / "cache"))
    model.eval()
    video = clip(5, 32, 32, seed=11)
    uri = f"{s3_bucket}/models/tiny"
    model.save_pretrained(uri, storage=s3_storage)
    assert s3_storage.exists(f"{uri}/model.safetensors") and s3_storage.exists(f"{uri}/vae/config.json")
    loaded = PyraTok.from_pretrained(uri, storage=s3_storage).eval()
    assert loaded.encode(video, ["s3"]).equal(model.encode(video, ["s3"]))
