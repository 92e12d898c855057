"""The vae-warmup stage's trainer: a random backbone VAE that reconstructs the train clips better after it."""

from __future__ import annotations

import pytest
import torch

from pyratok.config import load
from pyratok.core.storage import Storage
from pyratok.model.backbone import build_random_vae
from pyratok.pipelines.train.vae_warmup import train_clips, warm_up_vae

pytestmark = [pytest.mark.integration]


def _l1(vae, clips) -> float:
    with torch.no_grad():
        return float((vae.decode(vae.encode(clips).latent_dist.mean).sample.clamp(-1, 1) - clips).abs().mean())


def test_warm_up_lowers_the_reconstruction_error_and_writes_a_diffusers_vae(ingested_dataset, tmp_path):
    from diffusers import AutoencoderKLWan

    cfg = load(overrides=[f"work_dir={tmp_path}", "train.vae_warmup.steps=40", "train.vae_warmup.num_cpus=1",
                          "train.vae_warmup.windows=2"])
    result = warm_up_vae(cfg, data=ingested_dataset, out=str(tmp_path / "vae"))
    backbone = cfg.model.backbone
    clips = train_clips(Storage(), ingested_dataset, frames=5, sides=[32], max_clips=8, windows=2)[(32, 32)]
    before = _l1(build_random_vae(backbone.kind, backbone.arch, backbone.init_seed).eval(), clips)
    after = _l1(AutoencoderKLWan.from_pretrained(str(tmp_path / "vae")).eval(), clips)
    assert after < 0.92 * before, (before, after)  # 40 steps: ~12 % lower (400 in the local preset: ~19 dB)
    assert result.steps == 40 and result.clips == 2 * 15  # two windows of every (train) clip


def test_a_preset_with_vae_weights_needs_no_warm_up(ingested_dataset, tmp_path):
    cfg = load(overrides=[f"work_dir={tmp_path}", "train.vae_warmup.steps=5", "model.backbone.path=/weights/vae"])
    with pytest.raises(ValueError, match="pretrained VAE needs no warm-up"):
        warm_up_vae(cfg, data=ingested_dataset, out=str(tmp_path / "vae"))


def test_each_clip_gives_consecutive_windows_until_it_ends(ingested_dataset):
    """Windows are the clip's frames [0, F), [F, 2F), ... (decoded alone here, brute force), never past its end."""
    import numpy as np

    from pyratok.model.pixels import to_pixels
    from pyratok.pipelines.train.buckets import Geometry
    from pyratok.pipelines.train.decode import ClipDecodeError, decode_clip
    from pyratok.pipelines.train.vae_warmup import _train_videos

    storage = Storage()
    videos = _train_videos(storage, ingested_dataset, 3)
    clips = train_clips(storage, ingested_dataset, frames=9, sides=[32], max_clips=3, windows=40)[(32, 32)]
    expected = []
    for key, data in videos:
        for start in range(0, 40 * 9, 9):
            try:
                expected.append(decode_clip(data, Geometry(9, 32, 32), start=start, key=key))
            except ClipDecodeError:
                break
    assert 3 * 2 < len(expected) < 3 * 40  # several windows per clip, and they stop at each clip's end
    want = to_pixels(torch.from_numpy(np.stack(expected)).permute(0, 4, 1, 2, 3), torch.float32)
    assert torch.equal(clips, want)
