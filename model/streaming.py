"""Tokenizing and reconstructing in bounded memory: tile by tile, each tile through all of its causal time chunks.

Encoding: every encoder tile (crop = interior + halo) runs the encoder up to the deepest tap one VAE
chunk at a time with its own causal cache, then LaPQ (and, to reconstruct, the decoder fusion) on
its interior; token ids and fused latents land in whole-clip arrays (they scale with the token
grids, not with the pixels). Decoding: the decoder's head (``conv_in`` + the mid block, whose
attention spans the frame) runs on whole latent frames; then every decoder tile runs the
upsampling tail through all of its chunks and hands its interior pixels to a sink. Tiles' halos
cover the receptive fields, so tokens and pixels equal an untiled run's.

Sources and sinks are callables, so the same loops serve tensors (``PyraTok.encode/decode``) and
disk-backed frame stores (``pyratok tokenize/reconstruct`` on 4K/8K clips).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from pyratok.core.progress import Progress
from pyratok.model.region import decoder_head, decoder_pixels, encoder_taps, interior_taps
from pyratok.model.grid import fine_frame_range
from pyratok.model.tile_plan import TilePlan
from pyratok.model.vae_chunks import in_decoder_tail, in_encoder_taps, new_cache

if TYPE_CHECKING:
    from pyratok.model.text_encoder import TextEmbedding
    from pyratok.model.tokenizer import PyraTok

Source = Callable[[int, int, int, int, int, int], torch.Tensor]
"""(t0, t1, y0, y1, x0, x1) -> pixels (B, 3, t, h, w) in [-1, 1]."""
Sink = Callable[[torch.Tensor, int, int, int], None]
"""(pixels (B, 3, t, h, w), t0, y0, x0) -> None."""


def tensor_source(video: torch.Tensor) -> Source:
    return lambda t0, t1, y0, y1, x0, x1: video[:, :, t0:t1, y0:y1, x0:x1]


@torch.no_grad()
def encode_tiles(model: "PyraTok", source: Source, shape: tuple[int, int, int, int], text: "TextEmbedding | None", *,
                 plan: TilePlan, latents: bool = False, progress: bool = True,
                 ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Token ids per level (int32, (B, t_l, h_l, w_l)) and, with ``latents``, the fused decoder latents."""
    batch, frames, height, width = shape
    device = model.device
    grids = model.lapq.grids
    ids = [torch.zeros((batch, *g.shape(frames, height, width)), dtype=torch.int32) for g in grids]
    fused = None
    encoder = model.backbone.vae.encoder
    tiles, chunks, cell = plan.encoder_tiles(height, width), plan.chunks(frames), plan.cell
    with Progress(len(tiles) * len(chunks), f"encode {len(tiles)} tiles x {len(chunks)} chunks", unit="tile-chunk",
                  enabled=progress) as bar:
        for rows, cols in tiles:
            cache = new_cache(encoder)
            for j0, j1 in chunks:
                f0, f1 = plan.frames_of(j0, j1)
                crop = source(f0, f1, rows.lo * cell, rows.hi * cell, cols.lo * cell, cols.hi * cell).to(device)
                taps, cache = encoder_taps(model, crop, cache, first=j0 == 0)
                levels = model.lapq(interior_taps(model, taps, rows, cols), text, first=j0 == 0)
                for grid, level, dest in zip(grids, levels, ids):
                    ft, f = grid.ratio_to(grids[-1])[0], cell // grid.stride
                    t0, t1 = fine_frame_range(j0, j1, ft)
                    dest[:, t0:t1, rows.start * f : rows.stop * f, cols.start * f : cols.stop * f] = level.ids.to(torch.int32).cpu()
                if latents:
                    part = model.fusion([lv.out for lv in levels], first=j0 == 0).float().cpu()
                    if fused is None:
                        fused = torch.zeros(batch, part.shape[1], 1 + (frames - 1) // plan.frames_per_latent,
                                            height // plan.latent_stride, width // plan.latent_stride)
                    fused[:, :, j0:j1, rows.start : rows.stop, cols.start : cols.stop] = part
                bar.update()
    return ids, fused


@torch.no_grad()
def latents_from_ids(model: "PyraTok", ids: list[torch.Tensor], plan: TilePlan) -> torch.Tensor:
    """Fused decoder latents from stored token ids, one latent chunk x one strip of latent rows at a time.

    The fusion is local to a latent cell, so strips (one tile high) give the same latents as whole frames,
    while the finest level's embeddings (stride 4: 2 M cells per 8K frame) never exist for a whole frame.
    """
    grids, latent = model.lapq.grids, model.backbone.latent_grid
    device = model.device
    factors = [g.ratio_to(latent)[1] for g in grids]  # level cells per latent cell, per side
    batch, frames = ids[-1].shape[:2]
    rows, cols = ids[0].shape[2] // factors[0], ids[0].shape[3] // factors[0]
    strip = max(1, plan.tile * plan.cell // latent.stride)
    out = None
    for j0, j1 in plan.latent_chunks(frames):
        for r0 in range(0, rows, strip):
            r1 = min(rows, r0 + strip)
            parts = []
            for grid, level, level_ids, f in zip(grids, model.lapq.levels, ids, factors):
                t0, t1 = fine_frame_range(j0, j1, grid.ratio_to(grids[-1])[0])
                parts.append(level.embed_ids(level_ids[:, t0:t1, r0 * f : r1 * f].to(device)))
            piece = model.fusion(parts, first=j0 == 0).float().cpu()
            if out is None:
                out = torch.empty(batch, piece.shape[1], frames, rows, cols)
            out[:, :, j0:j1, r0:r1] = piece
    return out


@torch.no_grad()
def decode_tiles(model: "PyraTok", latents: torch.Tensor, sink: Sink, *, plan: TilePlan, progress: bool = True) -> None:
    """Latents (B, z, t, h, w) -> pixels handed to ``sink`` tile by tile (each tile's frames in order)."""
    device = model.device
    decoder = model.backbone.vae.decoder
    cache, feats = new_cache(decoder), []
    for j0, j1 in plan.latent_chunks(latents.shape[2]):
        feat, cache = decoder_head(model, latents[:, :, j0:j1].to(device), cache)
        feats.append(feat.cpu())
    features = torch.cat(feats, dim=2)
    del feats, cache
    s = plan.latent_stride
    height, width = latents.shape[-2] * s, latents.shape[-1] * s
    tiles, chunks = plan.decoder_tiles(height, width), plan.latent_chunks(latents.shape[2])
    with Progress(len(tiles) * len(chunks), f"decode {len(tiles)} tiles x {len(chunks)} chunks", unit="tile-chunk",
                  enabled=progress) as bar:
        for rows, cols in tiles:
            cache = new_cache(decoder)
            for j0, j1 in chunks:
                crop = features[:, :, j0:j1, rows.lo : rows.hi, cols.lo : cols.hi].to(device)
                pixels, cache = decoder_pixels(model, crop, cache, first=j0 == 0)
                py, px = rows.offset * s, cols.offset * s
                inner = pixels[..., py : py + rows.size * s, px : px + cols.size * s]
                sink(inner, plan.frames_of(j0, j1)[0], rows.start * s, cols.start * s)
                bar.update()


# -- memory budget ---------------------------------------------------------------------------------------------
class MemoryBudgetError(ValueError):
    """A clip that does not fit the memory budget even tiled; the message names the clip and the budget."""


def _densities(module: nn.Module, names: Callable[[str], bool], *, start_scale: float, grow: bool) -> tuple[float, float]:
    """(largest activation, sum of causal caches), in values per unit of ``start_scale``'s grid, walking the convs.

    Two details of diffusers' ``WanResample``: a temporally strided ``time_conv`` (down-sampling) caches
    one frame, not two; an up-sampling ``time_conv`` runs before its sibling ``resample`` (which holds the
    ``nn.Upsample``) although it is registered after it, so it counts at the pre-upsample scale.
    """
    largest, caches, scale = 0.0, 0.0, start_scale
    before_upsample: dict[str, float] = {}  # resample's owner -> scale before its upsample
    for name, m in module.named_modules():
        if not names(name) or ".lora_" in name:
            continue
        if grow and isinstance(m, nn.Upsample):
            owner = name.rsplit(".resample.", 1)[0] if ".resample." in name else None
            if owner is not None:
                before_upsample[owner] = scale
            factor = m.scale_factor
            scale *= float(factor[-1] if isinstance(factor, (tuple, list)) else factor)
        elif isinstance(m, (nn.Conv2d, nn.Conv3d)):
            at = scale
            if name.endswith(".time_conv"):
                at = before_upsample.get(name[: -len(".time_conv")], scale)
            if isinstance(m, nn.Conv3d) and m.kernel_size[0] > 1:
                caches += (1 if m.stride[0] > 1 else 2) * m.in_channels * at**2
            if not grow:
                scale /= m.stride[-1]
                at = scale
            largest = max(largest, m.out_channels * at**2)
    return largest, caches


@dataclass
class MemoryEstimate:
    clip: int
    """Bytes that scale with the clip: token ids, latents, the decoder's mid-block features."""
    tile: int
    """Bytes of one tile-chunk: its live activations and its causal caches."""

    @property
    def total(self) -> int:
        return self.clip + self.tile


LIVE_TENSORS = 6  # activations alive at once around the widest conv (input, norm, act, padded, output, shortcut)


def estimate_memory(model: "PyraTok", plan: TilePlan, shape: tuple[int, int, int, int], *, decode: bool) -> MemoryEstimate:
    batch, frames, height, width = shape
    vae = model.backbone.vae
    patch = vae.config.patch_size or 1
    last = model.backbone.tap_blocks
    enc_largest, enc_caches = _densities(vae.encoder, lambda n: in_encoder_taps(n, last), start_scale=1.0 / patch,
                                         grow=False)
    crop = (min(height, (plan.tile + 2 * plan.halo) * plan.cell) * min(width, (plan.tile + 2 * plan.halo) * plan.cell))
    tile = batch * crop * 4 * (4 * LIVE_TENSORS * enc_largest + enc_caches)  # fp32, a 4-frame VAE chunk
    latent_cells = batch * (1 + (frames - 1) // plan.frames_per_latent) * (height // plan.cell) * (width // plan.cell)
    clip = sum(batch * g.shape(frames, height, width)[0] * g.shape(frames, height, width)[1] * g.shape(frames, height, width)[2]
               for g in model.lapq.grids) * 4
    if decode:
        z = model.backbone.z_dim
        mid = vae.decoder.mid_block.resnets[0].out_dim
        clip += latent_cells * (z + mid) * 4
        s = plan.latent_stride
        dec_largest, dec_caches = _densities(vae.decoder, in_decoder_tail, start_scale=1.0 / s, grow=True)
        dcrop = (min(height, (plan.decoder_tile + 2 * plan.decoder_halo) * s)
                 * min(width, (plan.decoder_tile + 2 * plan.decoder_halo) * s))
        head = batch * (height // s) * (width // s) * mid * 4 * LIVE_TENSORS
        tile = max(tile, batch * dcrop * 4 * (LIVE_TENSORS * 4 * dec_largest + dec_caches), head)
    return MemoryEstimate(clip=int(clip), tile=int(tile))


def cache_values_per_pixel(model: "PyraTok") -> tuple[float, float]:
    """Causal-cache values at one chunk border per crop pixel: (encoder up to the taps, decoder tail)."""
    vae = model.backbone.vae
    _, enc = _densities(vae.encoder, lambda n: in_encoder_taps(n, model.backbone.tap_blocks),
                        start_scale=1.0 / (vae.config.patch_size or 1), grow=False)
    _, dec = _densities(vae.decoder, in_decoder_tail, start_scale=1.0 / model.backbone.latent_grid.stride, grow=True)
    return enc, dec


def border_cache_bytes(model: "PyraTok", plan: TilePlan, shape: tuple[int, int, int, int], *, value_bytes: int) -> int:
    """Bytes of the causal caches at every chunk border of every tile: what a training step keeps without nesting."""
    batch, frames, height, width = shape
    enc, dec = cache_values_per_pixel(model)

    def pixels(tiles, unit: int) -> int:
        return sum((r.hi - r.lo) * (c.hi - c.lo) for r, c in tiles) * unit * unit

    values = (enc * pixels(plan.encoder_tiles(height, width), plan.cell)
              + dec * pixels(plan.decoder_tiles(height, width), plan.latent_stride))
    return int(batch * (len(plan.chunks(frames)) - 1) * values * value_bytes)


def available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def check_budget(model: "PyraTok", plan: TilePlan, shape: tuple[int, int, int, int], *, name: str, decode: bool,
                 budget_gb: float | None) -> MemoryEstimate:
    """Refuse, naming the clip and the budget, what would not fit even tiled (instead of being killed)."""
    estimate = estimate_memory(model, plan, shape, decode=decode)
    budget = int(budget_gb * 2**30) if budget_gb is not None else int(available_memory() * 0.8)
    if estimate.total > budget:
        _, frames, height, width = shape
        raise MemoryBudgetError(
            f"{name}: {frames}x{height}x{width} needs about {estimate.total / 2**30:.1f} GiB even tiled "
            f"({estimate.clip / 2**30:.1f} GiB for the clip's tokens/latents + {estimate.tile / 2**30:.1f} GiB for one "
            f"tile of {plan.tile * plan.cell}px), over the memory budget of {budget / 2**30:.3g} GiB; "
            "use a smaller --tile, fewer --max-frames, or raise model.tiling.memory_budget_gb"
        )
    return estimate
