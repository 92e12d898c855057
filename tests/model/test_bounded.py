"""The memory-bounded training forward equals the untiled one: loss (rel 1e-5) and every trainable gradient (rel 1e-4).

The reference is the plain forward through diffusers' own encode/decode loops and the full-tensor loss
functions; the tiled forward cuts space into tiles with halos and time into causal chunks, each under
activation checkpointing, and sums the losses over tile interiors.
"""

from __future__ import annotations

import pytest
import torch

from pyratok.model.bounded import resolve_nested
from pyratok.model.region import decoder_head, decoder_pixels, encoder_taps
from pyratok.model.streaming import border_cache_bytes
from pyratok.model.vae_chunks import new_cache
from pyratok.model.losses.lpips import Lpips
from pyratok.model.tile_plan import plan_for
from tests.model.conftest import build, clip

EVERY_TERM = {
    "ar": {"enabled": True}, "text_kl": {"enabled": True}, "text_align": {"enabled": True},
    "dino": {"enabled": True}, "drift": {"enabled": True, "anchor": "both"}, "hier_kl": {"enabled": True},
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build("wan2.2", losses=EVERY_TERM)
    torch.manual_seed(1)
    m.lpips = Lpips()  # random VGG: the LPIPS path runs too (on sampled frames)
    m.lpips.features.apply(lambda mod: torch.nn.init.normal_(mod.weight, std=0.2) if hasattr(mod, "weight") else None)
    m.config.losses.lpips.max_frames = 3
    m.config.losses.lpips.enabled = True  # the tiny preset has it off (no VGG16 weights offline)
    return m.train()


def step(model, video, texts, **tiling):
    saved = model.config.tiling.model_copy()
    for key, value in tiling.items():
        setattr(model.config.tiling, key, value)
    try:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # same masks and AR window on both sides
        out = model(video, texts, progress=0.4)
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return out, grads
    finally:
        model.config.tiling = saved


@pytest.fixture(scope="module")
def clip_and_reference(model):
    video = clip(9, 48, 80, batch=2, seed=3)  # 3x5 coarse cells; 9 frames = 3 latent frames
    texts = ["a red car on a road", "waves"]
    return video, texts, step(model, video, texts, train=False)


def saved_bytes(model, video, texts, **tiling) -> int:
    """Bytes autograd saves for backward in one step (weights excluded, each storage once)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    saved_cfg = model.config.tiling.model_copy()
    for k, v in tiling.items():
        setattr(model.config.tiling, k, v)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(video, texts, progress=0.4, keep_recon="none")
        out.loss.backward()
        model.zero_grad(set_to_none=True)
    finally:
        model.config.tiling = saved_cfg
    return sum(seen.values())


SETTINGS = [
    pytest.param(dict(tile=512), id="one-tile-chunked"),
    pytest.param(dict(tile=32), id="tiles-2x2-cells-not-dividing"),  # 3x5 cells in 2-cell tiles: 2+1 x 2+2+1
    pytest.param(dict(tile=48, time_chunk=2), id="3-cell-tiles-chunk-2-of-3-latent-frames"),
    pytest.param(dict(tile=32, nested="always"), id="nested-tile-checkpoints"),
    pytest.param(dict(tile=32, checkpoint=False), id="no-checkpointing"),
    pytest.param(dict(tile=512, time_chunk="auto"), id="auto-chunk-whole-clip-one-region"),
]


@pytest.mark.parametrize("tiling", SETTINGS)
def test_tiled_loss_and_gradients_equal_untiled(model, clip_and_reference, tiling):
    video, texts, (ref, ref_grads) = clip_and_reference
    out, grads = step(model, video, texts, train=True, **tiling)
    assert set(out.losses) == set(ref.losses) >= {"l1", "ssim", "lpips", "commitment", "entropy", "hier_kl", "text_kl",
                                                   "text_align", "ar", "drift", "dino"}
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5 * abs(ref.loss.item())
    for name, value in ref.losses.items():
        assert torch.isclose(out.losses[name], value, rtol=1e-5, atol=1e-7), name
    assert out.pyramid.equal(ref.pyramid)
    assert (out.recon - ref.recon).abs().max() < 1e-5
    trained = [n for n, g in ref_grads.items() if g.abs().sum() > 0]
    assert len(trained) > 50  # LoRA on every used conv, every LaPQ level, fusion, heads
    for name in ref_grads:
        a, b = grads[name], ref_grads[name]
        assert (a - b).norm() <= 1e-4 * b.norm() + 1e-12, name


def test_checkpointing_keeps_only_boundaries_for_backward(model, clip_and_reference):
    """Activation bytes autograd keeps outside the checkpointed regions (weights excluded): a fraction of the
    untiled forward's. What is left is each region's inputs, chiefly the causal caches at chunk borders,
    one set per tile (six overlapping crops at 32 px tiles here). Nested checkpointing drops those caches
    from what the graph keeps: backward recomputes them one tile and one group at a time."""
    video, texts, _ = clip_and_reference

    def saved(**tiling):
        return saved_bytes(model, video, texts, **tiling)

    lc = model.config.losses
    lc.lpips.enabled = lc.dino.enabled = False  # scored on whole sampled frames: not the VAE's activations
    try:
        untiled = saved(train=False)
        one_tile = saved(train=True, tile=512, nested="never")
        small_tiles = saved(train=True, tile=32, nested="never")
        nested = saved(train=True, tile=32, nested="always")
    finally:
        lc.lpips.enabled = lc.dino.enabled = True
    assert one_tile < untiled / 6, (one_tile, untiled)
    assert one_tile < small_tiles < untiled / 2, (small_tiles, untiled)
    # left: each tile's crop (the tile-level checkpoint's input) and the decoder head's group borders
    assert nested < small_tiles / 3, (nested, small_tiles)


def _cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for t in cache if torch.is_tensor(t))


def test_border_cache_bytes_are_the_caches_the_chunks_hand_on(model):
    """border_cache_bytes (from the modules' shapes) = the bytes of the caches the chunk runners really return."""
    plan = plan_for(model)
    frames, height, width = 9, 48, 80  # one tile, 3 latent frames: 2 borders
    video = clip(frames, height, width, batch=2, seed=5)
    vae = model.backbone.vae
    with torch.no_grad():
        _, cache = encoder_taps(model, video[:, :, :1], new_cache(vae.encoder), first=True)
        _, cache = encoder_taps(model, video[:, :, 1:5], cache, first=False)
        encoder_bytes = _cache_bytes(cache)
        z = torch.randn(2, model.backbone.z_dim, 2, height // plan.latent_stride, width // plan.latent_stride)
        features, _ = decoder_head(model, z, new_cache(vae.decoder))
        _, cache = decoder_pixels(model, features[:, :, :1], new_cache(vae.decoder), first=True)
        _, cache = decoder_pixels(model, features[:, :, 1:], cache, first=False)
        decoder_bytes = _cache_bytes(cache)
    expected = 2 * (encoder_bytes + decoder_bytes)  # 2 borders, the batch inside each cache
    assert border_cache_bytes(model, plan, (2, frames, height, width), value_bytes=4) == expected


def test_nested_auto_follows_the_border_caches(model):
    plan = plan_for(model)
    saved = model.config.tiling.model_copy()
    small, large = clip(9, 48, 80, batch=1, seed=0), clip(33, 48, 80, batch=1, seed=0)
    small_bytes = border_cache_bytes(model, plan, (1, 9, 48, 80), value_bytes=4)
    large_bytes = border_cache_bytes(model, plan, (1, 33, 48, 80), value_bytes=4)
    assert large_bytes == 4 * small_bytes  # 8 borders vs 2
    model.config.tiling.nested = "auto"
    model.config.tiling.nested_above_gb = 2 * small_bytes / 2**30
    try:
        assert not resolve_nested(model, plan, small)
        assert resolve_nested(model, plan, large)
        model.config.tiling.nested = "never"
        assert not resolve_nested(model, plan, large)
    finally:
        model.config.tiling = saved


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    return video.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def test_uint8_clip_trains_like_its_float_pixels_and_saves_a_quarter_of_them(model):
    """The loader's uint8 frames go into the tiled forward as they are: each region converts its own crop, so the
    loss, every gradient and the tokens equal those of the float clip (x / 127.5 - 1), and what backward keeps of the
    clip is its uint8 storage: exactly 3 bytes per value less than the float clip's."""
    frames = to_uint8(clip(9, 48, 80, batch=2, seed=11))
    pixels = frames.float().div(127.5).sub(1)
    texts = ["a red car on a road", "waves"]
    ref, ref_grads = step(model, pixels, texts, train=True, tile=32)
    out, grads = step(model, frames, texts, train=True, tile=32)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    assert out.pyramid.equal(ref.pyramid)
    for name in ref_grads:
        assert (grads[name] - ref_grads[name]).norm() <= 1e-5 * ref_grads[name].norm() + 1e-12, name
    lc = model.config.losses
    lc.lpips.enabled = lc.dino.enabled = False  # their frames are converted whole (3 of them): not the clip
    try:
        as_float = saved_bytes(model, pixels, texts, train=True, tile=32, nested="never")
        as_uint8 = saved_bytes(model, frames, texts, train=True, tile=32, nested="never")
    finally:
        lc.lpips.enabled = lc.dino.enabled = True
    assert as_float - as_uint8 == pixels.numel() * 3


@pytest.mark.parametrize("train", [True, False], ids=["tiled", "untiled"])
def test_keep_recon_returns_what_was_asked(model, clip_and_reference, train):
    video, texts, (ref, _) = clip_and_reference
    outs = {}
    for keep in ("all", "first", "none"):
        saved = model.config.tiling.model_copy()
        model.config.tiling.train, model.config.tiling.tile = train, 32
        try:
            with torch.no_grad():
                torch.manual_seed(7)
                outs[keep] = model(video, texts, progress=0.4, keep_recon=keep)
        finally:
            model.config.tiling = saved
    assert outs["none"].recon is None
    assert outs["first"].recon.device.type == "cpu" and outs["first"].recon.shape == (1, *video.shape[1:])
    assert (outs["first"].recon - ref.recon[:1]).abs().max() < 1e-5
    assert (outs["all"].recon - ref.recon).abs().max() < 1e-5
    assert outs["none"].loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    with pytest.raises(ValueError, match="keep_recon"):
        model(video, texts, keep_recon="some")
