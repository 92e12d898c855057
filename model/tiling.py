"""Spatial tiling: tokenize and reconstruct videos larger than memory (4K/8K).

Encoding: the frame is cut into tiles aligned to the coarsest token stride;
each tile is encoded with a halo of context at least half the encoder's
receptive field, and only its core tokens are kept. Every op after the taps is
local to a coarse cell (per-token attention to the text, cell-sized resample
kernels), so the stitched token maps equal an untiled run's. Peak memory is
that of one (tile + 2 halo) crop.

Decoding: latents are fused tile by tile (the fusion is cell-local, so this is
exact), then the Wan decoder runs on blended overlapping tiles (diffusers'
own tiled decode).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from pyratok.model.pyramid import TokenPyramid

if TYPE_CHECKING:
    from pyratok.model.text_encoder import TextEmbedding
    from pyratok.model.tokenizer import PyraTok


def encoder_receptive_field(encoder: nn.Module, tap_names: list[str], patch: int = 1) -> int:
    """Receptive field (pixels) of the deepest tap along its longest conv path, in forward order."""
    last = tap_names[-1]
    field, stride = patch, patch
    for name, module in encoder.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)) and not name.endswith(("lora_A.pyratok", "lora_B.pyratok")):
            k, s = module.kernel_size[-1], module.stride[-1]
            field += (k - 1) * stride
            stride *= s
        if name == last:
            break
    return field


def default_halo(model: "PyraTok") -> int:
    """Half the receptive field plus one coarse cell, rounded up to the coarsest stride (pixels)."""
    vae = model.backbone.vae
    field = encoder_receptive_field(vae.encoder, model.backbone.taps.names, vae.config.patch_size or 1)
    cell = model.spatial_multiple
    return cell * math.ceil((field / 2 + cell) / cell)


def _spans(extent: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, extent)) for start in range(0, extent, size)]


@torch.no_grad()
def tiled_encode(model: "PyraTok", video: torch.Tensor, text: "TextEmbedding | None", *, tile: int,
                 halo: int | None = None, progress: bool = True) -> TokenPyramid:
    cell = model.spatial_multiple
    tile_cells = max(1, tile // cell)
    halo_cells = math.ceil((default_halo(model) if halo is None else halo) / cell)
    b, _, frames, height, width = video.shape
    rows, cols = height // cell, width // cell
    grids = model.lapq.grids
    out = [torch.zeros((b, *g.shape(frames, height, width)), dtype=torch.long, device=video.device) for g in grids]
    tiles = [(r, c) for r in _spans(rows, tile_cells) for c in _spans(cols, tile_cells)]
    for (r0, r1), (c0, c1) in tqdm(tiles, desc="encode tiles", disable=not progress or len(tiles) == 1):
        ir0, ir1 = max(0, r0 - halo_cells), min(rows, r1 + halo_cells)
        ic0, ic1 = max(0, c0 - halo_cells), min(cols, c1 + halo_cells)
        crop = video[..., ir0 * cell : ir1 * cell, ic0 * cell : ic1 * cell]
        for grid, ids, dest in zip(grids, model.quantize(crop, text), out):
            f = cell // grid.stride
            dest[:, :, r0 * f : r1 * f, c0 * f : c1 * f] = ids[:, :, (r0 - ir0) * f : (r1 - ir0) * f, (c0 - ic0) * f : (c1 - ic0) * f]
    return TokenPyramid(out, list(grids), (frames, height, width), model.lapq.code_bits)


@torch.no_grad()
def tiled_latents(model: "PyraTok", pyramid: TokenPyramid, *, tile: int) -> torch.Tensor:
    """Fused decoder latents, computed tile by tile (exact: the fusion is local to a latent cell)."""
    latent = model.backbone.latent_grid
    frames, height, width = pyramid.video_shape
    rows, cols = height // latent.stride, width // latent.stride
    tile_cells = max(1, tile // latent.stride)
    out = None
    for r0, r1 in _spans(rows, tile_cells):
        for c0, c1 in _spans(cols, tile_cells):
            crops = []
            for grid, ids in zip(pyramid.grids, pyramid.levels):
                f = latent.stride // grid.stride
                crops.append(ids[:, :, r0 * f : r1 * f, c0 * f : c1 * f])
            part = model.fuse(crops)
            if out is None:
                out = part.new_zeros(part.shape[0], part.shape[1], part.shape[2], rows, cols)
            out[..., r0:r1, c0:c1] = part
    return out
