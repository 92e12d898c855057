"""One tile-chunk of the VAE: taps of a pixel crop, and pixels of a crop of mid-block features.

These are the units that training (``model/bounded.py``) checkpoints and inference
(``model/streaming.py``) streams. Each takes the causal cache of its tile and returns the next one.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from pyratok.model.lora import adapters_disabled
from pyratok.model.tile_plan import Span
from pyratok.model.vae_chunks import Cache, decoder_head_chunk, decoder_tail_chunk, encoder_chunk, vae_chunks

if TYPE_CHECKING:
    from pyratok.model.tokenizer import PyraTok


def _patch(model: "PyraTok") -> int:
    return model.backbone.vae.config.patch_size or 1


def encoder_taps(model: "PyraTok", crop: torch.Tensor, cache: Cache, *, first: bool,
                 adapted: bool = True) -> tuple[list[torch.Tensor], Cache]:
    """Taps F^(1..L) of a pixel crop (B, 3, t, h, w) that starts the clip (``first``) or a later 4k-frame chunk.

    ``adapted=False``: the frozen encoder (LoRA off), the drift reference.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

    backbone = model.backbone
    x = patchify(crop, patch_size=_patch(model))
    pieces: list[list[torch.Tensor]] = [[] for _ in backbone.taps.names]
    with adapters_disabled(backbone.vae.encoder) if not adapted else contextlib.nullcontext():
        for part in vae_chunks(x.shape[2], first):
            with backbone.taps.collect() as store:
                _, cache = encoder_chunk(backbone.vae.encoder, x[:, :, part], cache, blocks=backbone.tap_blocks)
            for into, got in zip(pieces, store):
                into.extend(got)
    return [torch.cat(p, dim=2) for p in pieces], cache


def interior_taps(model: "PyraTok", taps: list[torch.Tensor], rows: Span, cols: Span) -> list[torch.Tensor]:
    """Each tap cropped to the tile's interior on its own grid."""
    cell = model.spatial_multiple
    out = []
    for tap, grid in zip(taps, model.backbone.tap_grids):
        f = cell // grid.stride
        out.append(tap[..., rows.offset * f : (rows.offset + rows.size) * f, cols.offset * f : (cols.offset + cols.size) * f])
    return out


def decoder_head(model: "PyraTok", latents: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, Cache]:
    """Latents (B, z, n, h, w) of whole frames -> mid-block features, one latent frame at a time."""
    vae = model.backbone.vae
    z = vae.post_quant_conv(latents)
    outs = []
    for j in range(z.shape[2]):
        out, cache = decoder_head_chunk(vae.decoder, z[:, :, j : j + 1], cache)
        outs.append(out)
    return torch.cat(outs, dim=2), cache


def decoder_pixels(model: "PyraTok", features: torch.Tensor, cache: Cache, *, first: bool) -> tuple[torch.Tensor, Cache]:
    """Mid-block features (B, C, n, h, w) of a crop -> pixels in [-1, 1] (B, 3, t, h*s, w*s)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    decoder = model.backbone.vae.decoder
    outs = []
    for j in range(features.shape[2]):
        out, cache = decoder_tail_chunk(decoder, features[:, :, j : j + 1], cache, first_chunk=first and j == 0)
        outs.append(out)
    pixels = unpatchify(torch.cat(outs, dim=2), patch_size=_patch(model))
    return pixels.clamp(-1.0, 1.0), cache

