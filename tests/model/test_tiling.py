"""Tiling: stitched tokens equal an untiled run's, crops bounded by tile + halo, blended tiled decode."""

from __future__ import annotations

import torch

from pyratok.model.tiling import default_halo, tiled_encode, tiled_latents
from tests.model.conftest import clip


def test_tiled_tokens_equal_untiled_and_crops_are_bounded(tiny22, monkeypatch):
    video = clip(5, 32, 192, seed=4)
    whole = tiny22.encode(video, ["a wide clip"])
    halo = default_halo(tiny22)
    assert halo % tiny22.spatial_multiple == 0
    crops = []
    original = tiny22.quantize

    def recording(crop, text):
        crops.append(tuple(crop.shape[-2:]))
        return original(crop, text)

    monkeypatch.setattr(tiny22, "quantize", recording)
    tiled = tiny22.encode(video, ["a wide clip"], tile=32)
    assert len(crops) == 6
    assert max(c[1] for c in crops) <= 32 + 2 * halo < 192  # never the whole frame
    assert tiled.equal(whole)


def test_too_small_halo_changes_tokens(tiny22):
    """The equality above is not vacuous: without context the border tokens differ."""
    video = clip(5, 32, 192, seed=4)
    temb = tiny22.embed_text(["a wide clip"], 1)
    no_halo = tiled_encode(tiny22, video, temb, tile=32, halo=0, progress=False)
    assert not no_halo.equal(tiny22.encode(video, ["a wide clip"]))


def test_tiled_decode(tiny22):
    video = clip(5, 64, 96, seed=5)
    pyramid = tiny22.encode(video, ["x"])
    # fusion is local to a latent cell: tiled latents are exact
    assert torch.allclose(tiled_latents(tiny22, pyramid, tile=32), tiny22.fuse(pyramid.levels), atol=1e-6)
    full = tiny22.decode(pyramid)
    assert torch.equal(tiny22.decode(pyramid, tile=128), full)  # one tile = untiled
    blended = tiny22.decode(pyramid, tile=64)
    assert blended.shape == full.shape and torch.isfinite(blended).all()
    assert blended.abs().max() <= 1
