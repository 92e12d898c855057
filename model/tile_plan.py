"""Where the tiles and time chunks of one clip are: the plan shared by training, tokenizing and reconstructing.

Space is cut on the coarsest token grid (so every level's grid and the VAE's strides line up at
tile borders) into interior tiles; each tile is computed on a crop widened by a halo that covers
the receptive field of what runs on it, and only its interior is kept. Time is cut on the latent
grid: chunk ``[j0, j1)`` of latent frames covers pixel frames ``fine_frame_range(j0, j1, 4)``
(frame 0 alone, then 4 per latent frame), which is also where the VAE's own causal chunks fall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyratok.model.grid import fine_frame_range

if TYPE_CHECKING:
    from pyratok.model.config import TilingConfig
    from pyratok.model.tokenizer import PyraTok


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in cells: interior ``[start, stop)``, computed on ``[lo, hi)``."""

    start: int
    stop: int
    lo: int
    hi: int

    @property
    def offset(self) -> int:
        """Where the interior starts inside the crop."""
        return self.start - self.lo

    @property
    def size(self) -> int:
        return self.stop - self.start


def spans(extent: int, tile: int, halo: int) -> list[Span]:
    """Interior tiles of ``tile`` cells over ``extent`` cells (the last one may be shorter), each with ``halo``."""
    tile = max(1, min(tile, extent))
    return [Span(s, min(s + tile, extent), max(0, s - halo), min(extent, s + tile + halo)) for s in range(0, extent, tile)]


def time_chunks(latent_frames: int, chunk: int) -> list[tuple[int, int]]:
    """Latent-frame chunks ``[j0, j1)``; the last one may be shorter."""
    return [(j, min(j + chunk, latent_frames)) for j in range(0, latent_frames, chunk)]


def auto_time_chunk(crop: int, height: int, width: int) -> int:
    """Latent frames per chunk that keep a clip's region within the voxels of one full ``crop``² chunk of 1."""
    return max(1, (crop * crop) // (min(height, crop) * min(width, crop)))


def pixel_frames(j0: int, j1: int, frames_per_latent: int = 4) -> tuple[int, int]:
    return fine_frame_range(j0, j1, frames_per_latent)


@dataclass(frozen=True)
class TilePlan:
    """Resolved tiling of one model (cells of the coarsest grid; the decoder's in latent cells)."""

    cell: int
    """Pixels per coarse cell (encoder tiles align to it)."""
    latent_stride: int
    frames_per_latent: int
    tile: int
    """Interior tile side in coarse cells."""
    halo: int
    """Encoder halo in coarse cells."""
    decoder_tile: int
    decoder_halo: int
    """Decoder halo in latent cells (mid-block feature grid)."""
    decoder_reach: float
    """How far, in latent cells, a decoded pixel depends on its input: the halo's exact margin is the rest."""
    time_chunk: int

    def encoder_tiles(self, height: int, width: int) -> list[tuple[Span, Span]]:
        rows, cols = height // self.cell, width // self.cell
        return [(r, c) for r in spans(rows, self.tile, self.halo) for c in spans(cols, self.tile, self.halo)]

    def decoder_tiles(self, height: int, width: int) -> list[tuple[Span, Span]]:
        rows, cols = height // self.latent_stride, width // self.latent_stride
        return [(r, c) for r in spans(rows, self.decoder_tile, self.decoder_halo)
                for c in spans(cols, self.decoder_tile, self.decoder_halo)]

    def chunks(self, frames: int) -> list[tuple[int, int]]:
        """Latent-frame chunks of a clip of ``frames`` pixel frames."""
        return self.latent_chunks(1 + (frames - 1) // self.frames_per_latent)

    def latent_chunks(self, latent_frames: int) -> list[tuple[int, int]]:
        return time_chunks(latent_frames, self.time_chunk)

    def frames_of(self, j0: int, j1: int) -> tuple[int, int]:
        return pixel_frames(j0, j1, self.frames_per_latent)

    def exact_margin(self) -> int:
        """Pixels past a decoder tile's interior that are still exact (its halo minus the decoder's reach)."""
        return max(0, int(math.floor((self.decoder_halo - self.decoder_reach) * self.latent_stride)))

    def tile_chunks(self, frames: int, height: int, width: int) -> int:
        return len(self.encoder_tiles(height, width)) * len(self.chunks(frames))


def plan_for(model: "PyraTok", cfg: "TilingConfig | None" = None, *, tile: int | None = None,
             clip: tuple[int, int] | None = None) -> TilePlan:
    """The plan of ``model`` under ``cfg`` (default: the model's own ``tiling``); ``tile`` (px) overrides its tile.

    ``clip`` (height, width) resolves ``time_chunk: auto`` (without it: 1 latent frame per chunk).
    """
    from pyratok.model import vae_chunks

    cfg = cfg or model.config.tiling
    backbone = model.backbone
    vae = backbone.vae
    cell, latent = model.spatial_multiple, backbone.latent_grid
    coarse = model.lapq.grids[-1]
    if cell != latent.stride or coarse != latent:
        raise ValueError(f"tiling needs the coarsest token grid ({coarse}, stride {cell}) to be the latent grid ({latent})")
    side = tile or cfg.tile
    tile_cells = max(1, side // cell)
    if cfg.halo is None:
        halo = vae_chunks.encoder_halo(vae.encoder, backbone.taps.names, patch=vae.config.patch_size or 1, cell=cell)
    else:
        halo = cfg.halo
    reach = vae_chunks.decoder_tail_reach(vae.decoder)
    decoder_halo = (vae_chunks.decoder_halo_cells(vae.decoder) if cfg.decoder_halo is None
                    else math.ceil(cfg.decoder_halo / latent.stride))
    halo_cells = math.ceil(halo / cell)
    chunk = cfg.time_chunk
    if chunk == "auto":
        chunk = 1 if clip is None else auto_time_chunk((tile_cells + 2 * halo_cells) * cell, *clip)
    return TilePlan(cell=cell, latent_stride=latent.stride, frames_per_latent=latent.frames_per_cell,
                    tile=tile_cells, halo=halo_cells, decoder_tile=max(1, side // latent.stride),
                    decoder_halo=decoder_halo, decoder_reach=reach, time_chunk=chunk)
