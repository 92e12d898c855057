"""The memory-bounded training forward: spatial tiles x causal time chunks, each under activation checkpointing.

The paper's "VAE tiling" for training at 512²..4096² x 17..97 frames. What is alive at once is one
tile-chunk of the VAE (recomputed in backward), plus what scales with the token grids (the latent
grid, the decoder's mid-block features, per-level token ids and the AR window) and the
input/output tensors themselves.

1. Encoder regions. For each spatial tile (its crop widened by the encoder halo) and each chunk of
   latent frames: the LoRA encoder up to the deepest tap (``region.encoder_taps``, the causal cache
   passed in and out explicitly), the taps cut to the tile's interior, the LaPQ levels and the
   decoder fusion on that interior (every op after the taps is local to a coarse cell), and the
   *sums* that the token-level losses are means of (commitment, entropies, KLs, pooled bits,
   drift against the frozen encoder's taps). Out come the interior's latents, those sums, its token
   ids and its part of the AR window.
2. Decoder head: ``conv_in`` + the mid block on whole frames of the stitched latents (its attention
   spans the frame), one chunk at a time; its features are kept for the clip (latent grid).
3. Decoder tail. For each spatial tile of those features (widened by the decoder halo) and each chunk:
   up blocks and output head, the pixels cut to the interior (plus the SSIM window's margin), and the
   reconstruction sums (L1, SSIM map, squared error) against the target's same crop. Frames sampled
   for LPIPS/DINO come out with their gradient and are scored whole afterwards.

Each region runs under ``torch.utils.checkpoint`` (non-reentrant), so backward recomputes it from
its inputs (the crop, the cache it was given). With ``nested``, each group of ~sqrt(chunks) chunks is
checkpointed too and, when there are several tiles, each whole tile: backward then holds the causal
caches at the group borders of one tile and those inside one group, instead of every chunk border of
the whole clip (one more forward of the VAE per checkpoint level in exchange; the tile level is
skipped for a single tile, where it would free nothing).
Every loss is the same function of the same numbers as the untiled forward's (sums over
disjoint interiors, divided once), so the tiled loss and gradients equal the untiled ones.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from pyratok.model.anchor import DinoAnchor, cell_of_frame
from pyratok.model.grid import causal_avg_pool, fine_frame_range, to_channels, to_tokens
from pyratok.model.lfq import bernoulli_entropy, bernoulli_kl, bernoulli_kl_probs, code_distribution_sum, entropy_of_average
from pyratok.model.losses.recon import frames_of, ssim_map, ssim_window
from pyratok.model.pixels import kept_recon, to_pixels
from pyratok.model.region import decoder_head, decoder_pixels, encoder_taps, interior_taps
from pyratok.model.tile_plan import Span, TilePlan, plan_for
from pyratok.model.vae_chunks import new_cache

if TYPE_CHECKING:
    from pyratok.model.ar_window import Window
    from pyratok.model.masking import MaskDraw
    from pyratok.model.text_encoder import TextEmbedding
    from pyratok.model.tokenizer import PyraTok


@dataclass
class BoundedResult:
    """What the tokenizer's forward needs to finish: the loss terms, stats, ids and the (detached) reconstruction."""

    terms: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]
    ids: list[torch.Tensor]
    recon: torch.Tensor | None
    """As ``keep_recon`` asked: the whole batch's, the first clip's on the CPU, or None."""
    window: "Window | None" = None
    window_bits: list[torch.Tensor] | None = None
    """Per level, the AR window's straight-through bits (B, t, h, w, bits)."""
    pooled_bits: torch.Tensor | None = None
    """(B, bits) mean bits per level, averaged over levels (for the text-codebook alignment)."""
    sampled: dict[int, torch.Tensor] = field(default_factory=dict)
    """Frame index -> reconstructed frame (B, 3, H, W) with its gradient (LPIPS, DINO)."""
    anchor_sums: list[torch.Tensor] | None = None
    """Per level, the DINO anchor's per-patch sums of the taps (B, frames, C, P, P) (``model/anchor.py``)."""


class Runner:
    """Runs ``fn`` under activation checkpointing (or plainly, when off or without grad).

    The arguments are flattened first: checkpoint keeps a non-tensor argument (a cache list) by
    reference for the whole graph's life, but hands tensor arguments to the enclosing saved-tensor
    hooks, so under a nested checkpoint the caches at chunk borders are dropped and recomputed.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, fn: Callable, *args: Any) -> Any:
        if not (self.enabled and torch.is_grad_enabled()):
            return fn(*args)
        leaves, spec = tree_flatten(args)

        def flat(*values):
            return fn(*tree_unflatten(list(values), spec))

        return torch_checkpoint(flat, *leaves, use_reentrant=False)


def resolve_nested(model: "PyraTok", plan: TilePlan, video: torch.Tensor) -> bool:
    mode = model.config.tiling.nested
    if mode != "auto":
        return mode == "always"
    from pyratok.model.streaming import border_cache_bytes

    b, _, frames, height, width = video.shape
    value_bytes = 2 if torch.is_autocast_enabled(video.device.type) else model.pixel_dtype.itemsize
    caches = border_cache_bytes(model, plan, (b, frames, height, width), value_bytes=value_bytes)
    return caches > model.config.tiling.nested_above_gb * 2**30


def _add(sums: dict[str, Any], key: str, value: torch.Tensor) -> None:
    sums[key] = value if key not in sums else sums[key] + value


# -- 1. encoder regions ------------------------------------------------------------------------------------------
@dataclass
class EncodeSpec:
    """What every encoder region of one forward needs besides its crop and caches."""

    model: Any
    plan: TilePlan
    text: Any
    mask: Any
    window: Any
    text_logits: torch.Tensor | None
    drift: bool
    """The VAE-anchored drift (adapted taps vs the frozen encoder's)."""
    dtype: torch.dtype
    """What a uint8 crop becomes (``model/pixels.py``)."""
    anchor: Any = None
    """The DINO anchor's plan (``PyraTok.anchor_plan``) or None."""


def _window_part(window: "Window", grids, level: int, t_range, rows: Span, cols: Span, f: int):
    """(source slices in the region's level tensor, destination slices in the window tensor) or None."""
    ts, ys, xs = window.level_slices(grids[level], grids[-1])
    region = ((t_range[0], t_range[1]), (rows.start * f, rows.stop * f), (cols.start * f, cols.stop * f))
    src, dst = [], []
    for (w0, w1), (r0, r1) in zip(((ts.start, ts.stop), (ys.start, ys.stop), (xs.start, xs.stop)), region):
        lo, hi = max(w0, r0), min(w1, r1)
        if lo >= hi:
            return None
        src.append(slice(lo - r0, hi - r0))
        dst.append(slice(lo - w0, hi - w0))
    return tuple(src), tuple(dst)


def encode_region(spec: EncodeSpec, rows: Span, cols: Span, j0: int, j1: int, crop: torch.Tensor,
                  cache: list, frozen_cache: list | None):
    model, plan = spec.model, spec.plan
    first = j0 == 0
    f0, _ = plan.frames_of(j0, j1)
    inputs = to_pixels(crop, spec.dtype)
    if spec.mask is not None:
        inputs = spec.mask.apply(inputs, frame0=f0, y0=rows.lo * plan.cell, x0=cols.lo * plan.cell)
    taps, cache = encoder_taps(model, inputs, cache, first=first)
    taps = interior_taps(model, taps, rows, cols)
    levels = model.lapq(taps, spec.text, first=first)
    latents = model.fusion([lv.out for lv in levels], first=first)

    lc, lapq_cfg = model.config.losses, model.config.lapq
    sums: dict[str, torch.Tensor] = {}
    grids = list(model.lapq.grids)
    windows = []
    for i, lv in enumerate(levels):
        q = lv.quantized
        if lc.commitment.enabled:
            sums[f"commitment/{i}"] = (q.z - q.bits.detach()).pow(2).sum()
        if lc.entropy.enabled:
            sums[f"token_entropy/{i}"] = bernoulli_entropy(q.logits.float()).sum()
            sums[f"code_dist/{i}"] = code_distribution_sum(q.logits, exact=lapq_cfg.exact_codebook_entropy,
                                                            group_bits=lapq_cfg.entropy_group_bits)
        if lc.text_kl.enabled:
            target = spec.text_logits.detach()[:, None, None, None, :]
            sums[f"text_kl/{i}"] = bernoulli_kl(q.logits, target).sum()
        if lc.text_align.enabled:
            sums[f"bits/{i}"] = q.bits.flatten(1, 3).sum(1)
        if lc.hier_kl.enabled and i > 0:
            parent = levels[i - 1]
            ft, fs = parent.grid.ratio_to(lv.grid)
            parent_p = to_tokens(causal_avg_pool(to_channels(torch.sigmoid(parent.quantized.logits)), ft, fs, first=first))
            sums[f"hier_kl/{i}"] = bernoulli_kl_probs(torch.sigmoid(q.logits), parent_p).sum()
        if spec.window is not None:
            ft = grids[i].ratio_to(grids[-1])[0]
            part = _window_part(spec.window, grids, i, fine_frame_range(j0, j1, ft), rows, cols,
                                plan.cell // grids[i].stride)
            windows.append(None if part is None else (q.bits[(slice(None), *part[0])], part[1]))
    if spec.anchor is not None:
        for i, (tap, (mrows, mcols)) in enumerate(zip(taps, spec.anchor.memberships)):
            f = plan.cell // grids[i].stride
            sums[f"anchor/{i}"] = DinoAnchor.patch_sums(tap, spec.anchor.frames, grids[i],
                                                        cell_of_frame(f0, grids[i].frames_per_cell), mrows, mcols,
                                                        rows.start * f, cols.start * f)
    if spec.drift:
        with torch.no_grad():
            frozen, frozen_cache = encoder_taps(model, inputs, frozen_cache, first=first, adapted=False)
            frozen = interior_taps(model, frozen, rows, cols)
        for i, (a, b) in enumerate(zip(taps, frozen)):
            sums[f"drift/{i}"] = (a.float() - b.float()).pow(2).sum()
    ids = [lv.ids for lv in levels]
    return latents, sums, ids, windows, cache, frozen_cache


def scan_chunks(chunks: list[tuple[int, int]], frames_of: Callable[[int, int], tuple[int, int]], step: Callable,
                tensor: torch.Tensor, caches: tuple, *, run: Runner, nested: Runner, group: int) -> list:
    """``step(j0, j1, part, caches) -> (out, caches)`` over the chunks, the causal caches handed on.

    Each chunk runs under ``run`` (a checkpoint). With ``nested``, consecutive chunks go in groups of
    ``group``, each group under one more checkpoint: backward then keeps the caches at group borders for
    the whole tile and those inside one group at a time (sqrt(chunks) of each instead of all of them).
    """
    outs = []
    for g in range(0, len(chunks), group):
        members = chunks[g : g + group]
        a, b = frames_of(*members[0])[0], frames_of(*members[-1])[1]

        def body(part: torch.Tensor, caches: tuple, members=members, a=a):
            got = []
            for j0, j1 in members:
                f0, f1 = frames_of(j0, j1)
                out, caches = run(functools.partial(step, j0, j1), part[:, :, f0 - a : f1 - a], caches)
                got.append(out)
            return got, caches

        got, caches = (nested if len(members) < len(chunks) else Runner(False))(body, tensor[:, :, a:b], caches)
        outs.extend(got)
    return outs


def group_size(chunks: int, nested: bool) -> int:
    return max(1, round(math.sqrt(chunks))) if nested else chunks


def encode_tile(spec: EncodeSpec, rows: Span, cols: Span, run: Runner, nested: Runner, crop: torch.Tensor):
    """Every chunk of one spatial tile, the causal caches (adapted, frozen) handed from chunk to chunk."""
    model, plan = spec.model, spec.plan
    encoder = model.backbone.vae.encoder

    def step(j0, j1, part, caches):
        latents, sums, ids, windows, cache, frozen = encode_region(spec, rows, cols, j0, j1, part, *caches)
        return (latents, sums, ids, windows), (cache, frozen)

    chunks = plan.chunks(crop.shape[2])
    out = scan_chunks(chunks, plan.frames_of, step, crop, (new_cache(encoder), new_cache(encoder) if spec.drift else None),
                      run=run, nested=nested, group=group_size(len(chunks), nested.enabled))
    latents = torch.cat([o[0] for o in out], dim=2)
    sums: dict[str, torch.Tensor] = {}
    for o in out:
        for key, value in o[1].items():
            _add(sums, key, value)
    ids = [torch.cat([o[2][i] for o in out], dim=1) for i in range(len(out[0][2]))]
    windows = [(level, part) for o in out for level, part in enumerate(o[3]) if part is not None]
    return latents, sums, ids, windows


# -- 2./3. decoder ----------------------------------------------------------------------------------------------
def decode_head_all(model: "PyraTok", plan: TilePlan, run: Runner, nested: Runner, latents: torch.Tensor) -> torch.Tensor:
    def step(j0, j1, part, caches):
        feat, cache = decoder_head(model, part, caches[0])
        return feat, (cache,)

    chunks = plan.latent_chunks(latents.shape[2])
    feats = scan_chunks(chunks, _same, step, latents, (new_cache(model.backbone.vae.decoder),), run=run, nested=nested,
                        group=group_size(len(chunks), nested.enabled))
    return torch.cat(feats, dim=2)


def _same(j0: int, j1: int) -> tuple[int, int]:
    return j0, j1


@dataclass
class DecodeSpec:
    model: Any
    plan: TilePlan
    target: torch.Tensor
    ssim_size: int
    sample_frames: tuple[int, ...]
    dtype: torch.dtype
    keep_recon: str


def decode_region(spec: DecodeSpec, rows: Span, cols: Span, j0: int, j1: int, features: torch.Tensor, cache: list):
    plan, target = spec.plan, spec.target
    s = plan.latent_stride
    height, width = target.shape[-2:]
    pixels, cache = decoder_pixels(spec.model, features, cache, first=j0 == 0)
    f0, f1 = plan.frames_of(j0, j1)
    y0, x0 = rows.start * s, cols.start * s  # interior, global pixels
    h, w = rows.size * s, cols.size * s
    # the SSIM window reaches size-1 pixels past the interior (within the exact margin of the halo)
    my, mx = min(spec.ssim_size - 1, height - y0 - h), min(spec.ssim_size - 1, width - x0 - w)
    for extra in (my, mx):
        if extra > plan.exact_margin():
            raise ValueError(f"decoder halo of {plan.decoder_halo} latent cells leaves no exact room for the SSIM window")
    py, px = rows.offset * s, cols.offset * s
    recon = pixels[..., py : py + h + my, px : px + w + mx]
    tgt = to_pixels(target[:, :, f0:f1, y0 : y0 + h + my, x0 : x0 + w + mx], spec.dtype)
    inner, inner_tgt = recon[..., :h, :w], tgt[..., :h, :w]
    diff = inner.float() - inner_tgt.float()
    sums = {"l1": diff.abs().sum(), "sq": (diff.detach() / 2).pow(2).sum()}
    # SSIM positions this tile owns: those whose window starts inside its interior
    own_y, own_x = min(h, height - spec.ssim_size + 1 - y0), min(w, width - spec.ssim_size + 1 - x0)
    if own_y > 0 and own_x > 0:
        score = ssim_map(frames_of(recon), frames_of(tgt), size=spec.ssim_size)
        sums["ssim"] = score[..., :own_y, :own_x].sum()
    sampled = {k: inner[:, :, k - f0] for k in spec.sample_frames if f0 <= k < f1}
    return sums, sampled, kept_recon(inner, spec.keep_recon), cache


def decode_tile(spec: DecodeSpec, rows: Span, cols: Span, run: Runner, nested: Runner, features: torch.Tensor):
    def step(j0, j1, part, caches):
        part_sums, part_sampled, recon, cache = decode_region(spec, rows, cols, j0, j1, part, caches[0])
        return (part_sums, part_sampled, recon), (cache,)

    chunks = spec.plan.latent_chunks(features.shape[2])
    out = scan_chunks(chunks, _same, step, features, (new_cache(spec.model.backbone.vae.decoder),), run=run,
                      nested=nested, group=group_size(len(chunks), nested.enabled))
    sums: dict[str, torch.Tensor] = {}
    sampled: dict[int, torch.Tensor] = {}
    for part_sums, part_sampled, _ in out:
        for key, value in part_sums.items():
            _add(sums, key, value)
        sampled.update(part_sampled)
    return sums, sampled, None if out[0][2] is None else torch.cat([o[2] for o in out], dim=2)


# -- the forward -------------------------------------------------------------------------------------------------
def _stitch_rows(tiles: list[tuple[Span, Span]], pieces: list[torch.Tensor]) -> torch.Tensor:
    """Interior pieces of a row-major tile grid -> one tensor (differentiable concatenation)."""
    rows: dict[int, list[torch.Tensor]] = {}
    for (r, _), piece in zip(tiles, pieces):
        rows.setdefault(r.start, []).append(piece)
    return torch.cat([torch.cat(row, dim=-1) for _, row in sorted(rows.items())], dim=-2)


def bounded_forward(model: "PyraTok", video: torch.Tensor, text: "TextEmbedding | None", *, mask: "MaskDraw | None",
                    want_ar: bool, sample_frames: tuple[int, ...], keep_recon: str = "all",
                    anchor=None) -> BoundedResult:
    cfg, lc = model.config, model.config.losses
    plan = plan_for(model, tile=cfg.tiling.tile_for(*video.shape[-2:]), clip=video.shape[-2:])
    run = Runner(cfg.tiling.checkpoint)
    nested = Runner(cfg.tiling.checkpoint and resolve_nested(model, plan, video))
    b, _, frames, height, width = video.shape
    grids = list(model.lapq.grids)
    shapes = [g.shape(frames, height, width) for g in grids]

    window = model.ar_head.choose_window(shapes[-1], grids) if want_ar else None
    text_logits = (model.semantic_head.text_code_logits(text.pooled, lc.text_kl.temperature)
                   if lc.text_kl.enabled else None)
    spec = EncodeSpec(model=model, plan=plan, text=text, mask=mask, window=window, text_logits=text_logits,
                      drift=lc.drift.enabled and lc.drift.anchor != "dino", dtype=model.pixel_dtype, anchor=anchor)

    tiles = plan.encoder_tiles(height, width)
    per_tile = nested if len(tiles) > 1 else Runner(False)
    latent_pieces, id_pieces, sums, window_parts = [], [], {}, []
    for rows, cols in tiles:
        crop = video[..., rows.lo * plan.cell : rows.hi * plan.cell, cols.lo * plan.cell : cols.hi * plan.cell]
        latents, tile_sums, ids, tagged = per_tile(functools.partial(encode_tile, spec, rows, cols, run, nested), crop)
        latent_pieces.append(latents)
        id_pieces.append(ids)
        for key, value in tile_sums.items():
            _add(sums, key, value)
        window_parts.extend(tagged)
    latents = _stitch_rows(tiles, latent_pieces)
    ids = [_stitch_rows(tiles, [p[i] for p in id_pieces]) for i in range(len(grids))]

    terms, stats, pooled = level_terms(model, sums, shapes, b)
    window_bits = None
    if window is not None:
        window_bits = []
        for i, grid in enumerate(grids):
            ts, ys, xs = window.level_slices(grid, grids[-1])
            buf = torch.zeros(b, ts.stop - ts.start, ys.stop - ys.start, xs.stop - xs.start, cfg.lapq.code_bits,
                              device=video.device)
            for level, (piece, dst) in window_parts:
                if level == i:
                    buf[(slice(None), *dst)] = piece.to(buf.dtype)
            window_bits.append(buf)

    features = decode_head_all(model, plan, run, nested, latents)  # whole frames: one "tile", no tile level
    dspec = DecodeSpec(model=model, plan=plan, target=video, ssim_size=ssim_window(height, width),
                       sample_frames=sample_frames, dtype=model.pixel_dtype, keep_recon=keep_recon)
    dec_tiles = plan.decoder_tiles(height, width)
    per_tile = nested if len(dec_tiles) > 1 else Runner(False)
    rec_sums: dict[str, torch.Tensor] = {}
    sampled: dict[int, list] = {}
    recon_pieces = []
    for rows, cols in dec_tiles:
        crop = features[..., rows.lo : rows.hi, cols.lo : cols.hi]
        tile_sums, tile_sampled, recon = per_tile(functools.partial(decode_tile, dspec, rows, cols, run, nested), crop)
        for key, value in tile_sums.items():
            _add(rec_sums, key, value)
        for k, v in tile_sampled.items():
            sampled.setdefault(k, []).append(v)
        recon_pieces.append(recon)
    recon = None if keep_recon == "none" else _stitch_rows(dec_tiles, recon_pieces)
    sampled_frames = {k: _stitch_rows(dec_tiles, v) for k, v in sampled.items()}

    n = video.numel()
    if lc.l1.enabled:
        terms["l1"] = rec_sums["l1"] / n
    if lc.ssim.enabled:
        size = dspec.ssim_size
        terms["ssim"] = 1 - rec_sums["ssim"] / (b * frames * 3 * (height - size + 1) * (width - size + 1))
    mse = rec_sums["sq"] / n
    stats["psnr"] = -10 * torch.log10(mse.clamp_min(1e-10))
    anchor_sums = None if anchor is None else [sums[f"anchor/{i}"] for i in range(len(grids))]
    return BoundedResult(terms=terms, stats=stats, ids=ids, recon=recon, window=window, window_bits=window_bits,
                         pooled_bits=pooled, sampled=sampled_frames, anchor_sums=anchor_sums)


def level_terms(model: "PyraTok", sums: dict[str, torch.Tensor], shapes, batch: int):
    """The token-level loss terms from their sums (the untiled forward's means, term by term)."""
    lc, bits = model.config.losses, model.config.lapq.code_bits
    tokens = [batch * t * h * w for t, h, w in shapes]
    levels = range(len(shapes))
    terms: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}

    def mean(values):
        return torch.stack(list(values)).mean(0)

    if lc.commitment.enabled:
        terms["commitment"] = mean(sums[f"commitment/{i}"] / (tokens[i] * bits) for i in levels)
    if lc.entropy.enabled:
        per_level = []
        for i in levels:
            token_h = sums[f"token_entropy/{i}"] / tokens[i]
            book_h = entropy_of_average(sums[f"code_dist/{i}"] / tokens[i])
            per_level.append(token_h - lc.entropy.gamma * book_h)
            stats[f"token_entropy/level{i + 1}"] = token_h.detach()
            stats[f"codebook_entropy/level{i + 1}"] = book_h.detach()
        terms["entropy"] = mean(per_level)
    if lc.hier_kl.enabled and len(shapes) > 1:
        terms["hier_kl"] = mean(sums[f"hier_kl/{i}"] / tokens[i] for i in levels if i > 0)
    if lc.text_kl.enabled:
        terms["text_kl"] = mean(sums[f"text_kl/{i}"] / tokens[i] for i in levels)
    pooled = None
    if lc.text_align.enabled:
        pooled = mean(sums[f"bits/{i}"] / (tokens[i] // batch) for i in levels)
    if lc.drift.enabled and lc.drift.anchor != "dino":
        channels = model.backbone.tap_channels
        terms["drift"] = mean(sums[f"drift/{i}"] / (tokens[i] * channels[i]) for i in levels)
    return terms, stats, pooled
