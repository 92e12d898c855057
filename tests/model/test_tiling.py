"""Tiled, time-chunked tokenize/decode: same tokens and pixels as untiled, halos from the whole receptive field."""

from __future__ import annotations

import pytest
import torch

from pyratok.model.backbone import build_random_vae
from pyratok.model.config import TilingConfig
from pyratok.model.region import decoder_head, decoder_pixels, encoder_taps, interior_taps
from pyratok.model.taps import TapCollector, default_tap_names
from pyratok.model.tile_plan import Span, auto_time_chunk, plan_for, spans
from pyratok.model.vae_chunks import (
    blocks_through, decoder_halo_cells, encoder_halo, encoder_receptive_field, new_cache,
)
from tests.model.conftest import clip


def test_receptive_field_counts_the_last_taps_own_convs():
    """Real Wan 2.2 / 2.1 architectures: the walk must not stop before the deepest tap's convs."""
    for kind, field, halo in (("wan2.2", 274, 160), ("wan2.1", 137, 80)):
        vae = build_random_vae(kind, {"base_dim": 8, "decoder_base_dim": 8} if kind == "wan2.2" else {"base_dim": 8})
        names = default_tap_names(vae.encoder)
        patch = vae.config.patch_size or 1
        assert encoder_receptive_field(vae.encoder, names, patch) == field
        cell = 16 if kind == "wan2.2" else 8
        assert encoder_halo(vae.encoder, names, patch=patch, cell=cell) == halo


def test_spans_cover_the_extent_once_with_clipped_halos():
    got = spans(10, 4, 3)
    assert [(s.start, s.stop) for s in got] == [(0, 4), (4, 8), (8, 10)]
    assert [(s.lo, s.hi) for s in got] == [(0, 7), (1, 10), (5, 10)]
    assert Span(4, 8, 1, 10).offset == 3


class _Taps:
    """The real Wan 2.2 architecture (full widths, random weights): taps of a middle tile vs the whole frame."""

    def __init__(self):
        torch.manual_seed(0)
        self.vae = build_random_vae("wan2.2").eval()
        self.names = default_tap_names(self.vae.encoder)
        self.collector = TapCollector(self.vae.encoder, self.names)
        self.blocks = blocks_through(self.vae.encoder, self.names)
        g = torch.Generator().manual_seed(1)
        self.video = torch.rand(1, 3, 1, 32, 576, generator=g) * 2 - 1  # one frame, 36 coarse cells wide

    @torch.no_grad()
    def taps(self, video):
        from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

        from pyratok.model.vae_chunks import encoder_chunk

        with self.collector.collect() as store:
            encoder_chunk(self.vae.encoder, patchify(video, patch_size=2), new_cache(self.vae.encoder), blocks=self.blocks)
        return TapCollector.concat(store)

    def tile_error(self, halo_px: int) -> float:
        """Largest relative error of the deepest tap in the interior of cells [16, 20) with ``halo_px`` of context."""
        lo, hi = 16 * 16 - halo_px, 20 * 16 + halo_px
        whole = self.taps(self.video)[-1][..., 16:20]
        tile = self.taps(self.video[..., lo:hi])[-1]
        inner = tile[..., halo_px // 16 : halo_px // 16 + 4]
        return float((inner - whole).abs().max() / whole.abs().max())


@pytest.fixture(scope="module")
def wan22_taps():
    return _Taps()


def test_default_halo_makes_real_wan22_tiles_exact(wan22_taps):
    halo = encoder_halo(wan22_taps.vae.encoder, wan22_taps.names, patch=2, cell=16)
    assert halo == 160
    assert wan22_taps.tile_error(halo) < 1e-5


def test_too_small_halo_changes_real_wan22_taps(wan22_taps):
    """The negative control: the old default (96 px, counted to the deepest tap's start) is not exact."""
    assert wan22_taps.tile_error(96) > 1e-3


def test_tiled_tokens_equal_untiled_for_tiles_that_do_not_divide_the_frame(tiny22):
    video = clip(9, 48, 208, seed=4)  # 13 coarse cells wide: tiles of 3 cells leave one of 1
    whole = tiny22.encode(video, ["a wide clip"])
    for tile in (48, 64, 512):
        assert tiny22.encode(video, ["a wide clip"], tile=tile).equal(whole), tile


def test_tiled_tokens_with_no_halo_differ(tiny22):
    """The equality above is not vacuous: without context the border tokens differ."""
    video = clip(5, 32, 192, seed=4)
    whole = tiny22.encode(video, ["a wide clip"])
    from pyratok.model.streaming import encode_tiles, tensor_source

    plan = plan_for(tiny22, TilingConfig(tile=32, halo=0))
    ids, _ = encode_tiles(tiny22, tensor_source(video), (1, 5, 32, 192), tiny22.embed_text(["a wide clip"], 1),
                          plan=plan, progress=False)
    assert not all(torch.equal(a.long(), b) for a, b in zip(ids, whole.levels))


def test_time_chunked_taps_equal_the_vae_loop(tiny22):
    """The explicit-cache chunk loop gives diffusers' own encode loop's taps, chunk sizes 1 and 2 latent frames."""
    video = clip(13, 32, 48, seed=2)
    expected, _ = tiny22.backbone.encode(video)
    whole_rows, whole_cols = Span(0, 2, 0, 2), Span(0, 3, 0, 3)
    for chunk in (1, 2):
        cache, pieces = new_cache(tiny22.backbone.vae.encoder), []
        plan = plan_for(tiny22, TilingConfig(time_chunk=chunk))
        for j0, j1 in plan.chunks(13):
            f0, f1 = plan.frames_of(j0, j1)
            with torch.no_grad():
                taps, cache = encoder_taps(tiny22, video[:, :, f0:f1], cache, first=j0 == 0)
            pieces.append(interior_taps(tiny22, taps, whole_rows, whole_cols))
        for i, want in enumerate(expected):
            assert torch.allclose(torch.cat([p[i] for p in pieces], 2), want, atol=1e-6), (chunk, i)


def test_auto_time_chunk_fills_the_voxels_of_one_full_crop():
    """Hand-computed: an 832 px crop (512 px tile + 2 x 160 px halo) holds 832² x 4 voxels per 1-frame chunk."""
    assert auto_time_chunk(832, 1080, 1920) == 1  # at least one crop in both sides: 1 latent frame
    assert auto_time_chunk(832, 512, 512) == 2  # 832² / 512² = 2.64
    assert auto_time_chunk(832, 256, 256) == 10  # 10.56
    assert auto_time_chunk(832, 256, 2048) == 3  # 832² / (256 * 832) = 3.25: only the short side is below a crop
    assert auto_time_chunk(832, 64, 64) == 169


def test_auto_time_chunk_in_the_plan(tiny22):
    fixed = plan_for(tiny22, TilingConfig(tile=32, time_chunk=1))
    crop = (fixed.tile + 2 * fixed.halo) * fixed.cell
    small = plan_for(tiny22, TilingConfig(tile=32, time_chunk="auto"), clip=(32, 48))
    assert small.time_chunk == crop * crop // (min(32, crop) * min(48, crop)) > 1
    assert small.chunks(13) == [(0, 4)]  # 4 latent frames in one region
    assert plan_for(tiny22, TilingConfig(tile=32, time_chunk="auto"), clip=(crop, 4 * crop)).time_chunk == 1
    assert plan_for(tiny22, TilingConfig(tile=32, time_chunk="auto")).time_chunk == 1  # no clip: the VAE's own chunk


def test_tiled_decode_equals_untiled_by_value(tiny22):
    """On a clip that takes the tiled path (several tiles, several chunks), not merely a plausible range."""
    video = clip(9, 64, 224, seed=5)
    pyramid = tiny22.encode(video, ["x"])
    full = tiny22.decode(pyramid)
    for tile in (40, 64):  # 40 rounds down to 2 latent cells: tile borders stay on the 16 px grid
        tiled = tiny22.decode(pyramid, tile=tile)
        assert (tiled - full).abs().max() < 1e-5, tile


@torch.no_grad()
def test_decoder_halo_from_the_tails_reach_is_exact_and_a_small_one_is_not(tiny22):
    vae = tiny22.backbone.vae
    latents = torch.randn(1, tiny22.backbone.z_dim, 2, 2, 30, generator=torch.Generator().manual_seed(3))
    full = tiny22.backbone.decode(latents)
    feats, _ = decoder_head(tiny22, latents, new_cache(vae.decoder))

    def middle(halo: int) -> torch.Tensor:
        lo, hi = 13 - halo, 17 + halo
        pixels, _ = decoder_pixels(tiny22, feats[..., lo:hi], new_cache(vae.decoder), first=True)
        return pixels[..., halo * 16 : (halo + 4) * 16]

    want = full[..., 13 * 16 : 17 * 16]
    assert (middle(decoder_halo_cells(vae.decoder)) - want).abs().max() < 1e-5
    assert (middle(2) - want).abs().max() > 1e-3


def test_latents_from_ids_in_strips_equal_the_whole_frame_fusion(tiny22):
    """Decode fuses token ids into latents one latent chunk x one strip of latent rows at a time (the 8K frame's
    finest level is never embedded whole); the fusion is cell-local, so every strip size gives the same latents."""
    from pyratok.model.streaming import latents_from_ids
    from pyratok.model.tile_plan import plan_for

    torch.manual_seed(0)
    frames, height, width = 9, 80, 48
    ids = [torch.randint(0, 2**16, (2, *g.shape(frames, height, width)), dtype=torch.int32) for g in tiny22.lapq.grids]
    with torch.no_grad():
        whole = tiny22.fuse([level.long() for level in ids]).float()
        for tile in (16, 32, 512):  # strips of 1 and 2 latent rows (5 rows: uneven), and one strip
            strips = latents_from_ids(tiny22, ids, plan_for(tiny22, tile=tile))
            assert strips.shape == whole.shape
            assert (strips - whole).abs().max() < 1e-5, tile
