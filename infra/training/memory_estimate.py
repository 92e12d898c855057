"""Per-GPU memory of the paper-scale preset with the tiled, time-chunked, checkpointed training forward.

Builds PyraTok with the production Wan 2.2 VAE architecture (random weights, real shapes) and the
stage-2 objective, then measures, with ``saved_tensors_hooks`` (each storage counted once):

1. one tile-chunk: the bytes an encoder region, a decoder-tail region and a decoder-head chunk save
   for backward when recomputed (run once without checkpointing at two small crops, 4 frames each;
   conv activations are linear in the crop's pixels, so a line through the probes gives them at the
   paper's crops: 512 px tiles + the exact halos);
2. what the checkpointed forward keeps for the whole clip (``tiling.checkpoint=True``): inputs of each
   region, the stitched latents, the decoder mid-block features, token ids, the AR window, LPIPS
   frames... at two clip sizes; linear in the clip's voxels;
3. the causal caches at chunk borders, from the real modules (2 frames per causal conv): with
   nested tile checkpointing they are alive for one tile at a time.

Peak per GPU = weights (bf16) + ZeRO-2 optimizer and gradient terms + input and detached
reconstruction (bf16) + part 2 + part 3 + the largest of part 1's regions. Writes the markdown
tables that ``infra/training/README.md`` quotes.

    .venv/bin/python infra/training/memory_estimate.py            # ~10 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import numpy as np
import torch

GB = 1024**3
QWEN_LM_PARAMS = 3.09e9  # Qwen2.5-VL-3B language model (text side of the alignment), frozen
DINOV3_L_PARAMS = 0.30e9  # DINOv3 ViT-L/16, frozen, stage 3 only
GPUS = 128
HBM = 80 * GB
TARGETS = [  # (label, global batch per GPU, frames, height, width)
    ("stage 1-2 smallest", 4, 17, 512, 512),
    ("stage 1-2 mean draw", 4, 57, 1280, 1280),
    ("stage 1-2 largest", 4, 97, 2048, 2048),
    ("stage 3 largest", 2, 97, 4096, 4096),
]


def build_model(tile: int):
    from pyratok.config import load
    from pyratok.model import PyraTok
    from pyratok.model.presets import production
    from pyratok.pipelines.train.stages import stage_config

    cfg = load("local")
    cfg = cfg.model_copy(update={"model": production("wan2.2")})
    cfg = stage_config(cfg, 2)  # stage 2: the full objective except DINO (DINO's cost is constant)
    cfg.model.tiling.tile = tile
    model = PyraTok.from_config(cfg.model)
    return model.train()


class SavedBytes:
    """Activation bytes autograd saves, split by the region kind that was running (``phase``).

    Weights that autograd keeps (a conv saves its weight for the input's gradient) are the model's
    own memory, counted once in the weights row, so they are left out here.
    """

    def __init__(self, model):
        self.phase = "outside"
        self.by_phase: dict[str, dict[int, int]] = {}
        self.weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.weights |= {b.untyped_storage().data_ptr() for b in model.buffers()}

    def pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.weights:
            self.by_phase.setdefault(self.phase, {})[storage.data_ptr()] = storage.nbytes()
        return tensor

    def total(self, phase: str) -> int:
        return sum(self.by_phase.get(phase, {}).values())

    @contextlib.contextmanager
    def hooks(self):
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            yield


def region_probe(model, side: int) -> dict[str, int]:
    """Saved bytes of each region kind for a clip of 5 frames x side² run as one tile (no checkpointing).

    The clip's second chunk (4 frames) is what every later chunk looks like; the probe's per-region
    maxima are taken over chunks.
    """
    from pyratok.model import bounded

    meter = SavedBytes(model)
    per_region: dict[str, int] = {}
    originals = {name: getattr(bounded, name) for name in ("encode_region", "decode_region", "decoder_head")}

    def wrap(name, fn):
        def run(*args, **kwargs):
            meter.phase = f"{name}:{id(args)}"
            try:
                return fn(*args, **kwargs)
            finally:
                key = meter.phase
                meter.phase = "outside"
                per_region[name] = max(per_region.get(name, 0), meter.total(key))
        return run

    for name, fn in originals.items():
        setattr(bounded, name, wrap(name, fn))
    model.config.tiling.checkpoint = False
    model.config.tiling.time_chunk = 1
    try:
        video = torch.rand(1, 3, 5, side, side) * 2 - 1
        with meter.hooks():
            out = model(video, ["a probe clip"], progress=0.5)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
    finally:
        for name, fn in originals.items():
            setattr(bounded, name, fn)
        model.config.tiling.checkpoint = True
    return per_region


def persistent_probe(model, frames: int, side: int) -> tuple[int, int, int]:
    """(bytes the checkpointed tiled forward keeps outside its regions and the AR head, AR head bytes, AR tokens).

    The AR head's window is capped by its token budget, not by the clip, so it is measured apart and
    scaled to the full budget; what is left grows with the clip.
    """
    meter = SavedBytes(model)
    video = torch.rand(1, 3, frames, side, side) * 2 - 1
    head = model.ar_head
    original = head.forward_window
    tokens = []

    def ar_phase(*args, **kwargs):
        meter.phase = "ar"
        try:
            result = original(*args, **kwargs)
            tokens.append(result.tokens)
            return result
        finally:
            meter.phase = "outside"

    model.config.tiling.nested = "always"  # as at paper scale: chunk-border caches live inside each tile's checkpoint
    head.forward_window = ar_phase
    try:
        with meter.hooks():
            out = model(video, ["a probe clip"], progress=0.5)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
    finally:
        model.config.tiling.nested = "auto"
        del head.forward_window
    return meter.total("outside"), meter.total("ar"), tokens[0]


def cache_values_per_pixel(model) -> tuple[float, float]:
    """Causal-cache values per input pixel and per chunk, encoder and decoder tail (2 frames per causal conv)."""
    from pyratok.model.streaming import _densities
    from pyratok.model.vae_chunks import in_decoder_tail, in_encoder_taps

    vae = model.backbone.vae
    blocks = model.backbone.tap_blocks
    _, enc = _densities(vae.encoder, lambda n: in_encoder_taps(n, blocks), start_scale=1.0 / (vae.config.patch_size or 1),
                        grow=False)
    _, dec = _densities(vae.decoder, in_decoder_tail, start_scale=1.0 / model.backbone.latent_grid.stride, grow=True)
    return enc, dec


def fit(xs, ys):
    slope, intercept = np.polyfit(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64), 1)
    return float(slope), float(intercept)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--region-probes", default="48,80", help="crop sides (px) of the one-tile probes")
    parser.add_argument("--clip-probes", default="9x64,17x64", help="frames x side of the persistent probes")
    args = parser.parse_args()
    from pyratok.model.tile_plan import plan_for

    torch.manual_seed(0)
    model = build_model(args.tile)
    plan = plan_for(model)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    vae = sum(p.numel() for p in model.backbone.parameters() if not p.requires_grad)
    print(f"trainable {trainable / 1e6:.1f} M; frozen VAE {vae / 1e6:.1f} M; plan: tile {plan.tile * plan.cell} px, "
          f"encoder halo {plan.halo * plan.cell} px, decoder halo {plan.decoder_halo * plan.latent_stride} px, "
          f"chunk {plan.time_chunk} latent frame(s)")

    started = time.perf_counter()
    probes = {}
    for side in (int(v) for v in args.region_probes.split(",")):
        probes[side] = region_probe(model, side)
        print(f"region probe {side}px: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in probes[side].items()))
    sides = sorted(probes)
    # per region kind: bytes per crop pixel (a 4-frame chunk) in fp32
    lines = {kind: fit([s * s for s in sides], [probes[s][kind] for s in sides]) for kind in probes[sides[0]]}
    persist, ar_bytes = [], 0.0
    for text in args.clip_probes.split(","):
        frames, side = (int(v) for v in text.split("x"))
        nbytes, ar, tokens = persistent_probe(model, frames, side)
        persist.append((frames * side * side, nbytes))
        ar_bytes = max(ar_bytes, ar * model.config.ar.token_budget / tokens)
        print(f"persistent probe {text}: {nbytes / 2**20:.1f} MiB kept outside the regions; AR head {ar / 2**20:.0f} MiB "
              f"for {tokens} tokens")
    per_voxel, persist_fixed = fit(*zip(*persist))
    persist_fixed = max(0.0, persist_fixed) + ar_bytes
    enc_cache, dec_cache = cache_values_per_pixel(model)
    print(f"probes took {time.perf_counter() - started:.0f} s")

    frozen_all = vae + QWEN_LM_PARAMS + DINOV3_L_PARAMS
    weights = (frozen_all + trainable) * 2
    optimizer = trainable * 12 / GPUS
    grads = trainable * 2 / GPUS + trainable * 2
    fixed = weights + optimizer + grads
    enc_crop = (plan.tile + 2 * plan.halo) * plan.cell
    dec_crop = (plan.decoder_tile + 2 * plan.decoder_halo) * plan.latent_stride

    def region_bf16(kind: str, crop_pixels: float) -> float:
        slope, intercept = lines[kind]
        return max(0.0, slope * crop_pixels + intercept) / 2

    print()
    print("| term | per GPU |")
    print("|---|---|")
    print(f"| frozen weights, bf16 (VAE {vae / 1e9:.2f} B + Qwen2.5-VL-3B LM + DINOv3-L) | {frozen_all * 2 / GB:.1f} GB |")
    print(f"| trainable {trainable / 1e6:.0f} M: bf16 weights + ZeRO-2 AdamW state and gradients over {GPUS} GPUs | "
          f"{(trainable * 2 + optimizer + grads) / GB:.2f} GB |")
    print(f"| one encoder tile-chunk (crop {enc_crop}² x 4 frames), recomputed, bf16 | "
          f"{region_bf16('encode_region', min(enc_crop, 4096) ** 2) / GB:.1f} GB |")
    print(f"| one decoder-tail tile-chunk (crop {dec_crop}² x 4 frames), recomputed, bf16 | "
          f"{region_bf16('decode_region', min(dec_crop, 4096) ** 2) / GB:.1f} GB |")
    print(f"| kept for the whole clip outside the regions, bf16 | {per_voxel / 2:.1f} B per voxel + {persist_fixed / 2 / GB:.2f} GB "
          f"(AR head at its {model.config.ar.token_budget}-token budget) |")
    print("| input clip + detached reconstruction, bf16 | 12 B per voxel |")
    print(f"| causal caches at chunk borders, one tile (nested), bf16 | {enc_cache * 2:.0f} + {dec_cache * 2:.0f} B per crop pixel per chunk |")
    print()
    print("| geometry | batch/GPU | micro-batch x accumulation | tile (halo compute x) | tile-chunks per clip | peak per GPU | fits 80 GB |")
    print("|---|---|---|---|---|---|---|")
    halo_px, dec_halo_px = plan.halo * plan.cell, plan.decoder_halo * plan.latent_stride
    for label, batch, frames, height, width in TARGETS:
        voxels_per_clip = frames * height * width
        chunks = len(plan.chunks(frames))
        group = max(1, round(math.sqrt(chunks)))
        live_caches = math.ceil(chunks / group) + group  # nested: group borders of one tile + inside one group
        best = None
        for tile in (512, 384, 256):
            for micro in (batch, 2, 1):
                if batch % micro:
                    continue
                enc_px = min(tile + 2 * halo_px, height) * min(tile + 2 * halo_px, width)
                dec_px = min(tile + 2 * dec_halo_px, height) * min(tile + 2 * dec_halo_px, width)
                head = region_bf16("decoder_head", height * width)
                regions = max(region_bf16("encode_region", enc_px), region_bf16("decode_region", dec_px), head) * micro
                caches = micro * live_caches * 2 * max(enc_cache * enc_px, dec_cache * dec_px)
                keep = micro * voxels_per_clip * (per_voxel / 2 + 12) + persist_fixed / 2
                peak = fixed + keep + caches + regions
                overhead = (enc_px + dec_px) / (2 * min(tile, height) * min(tile, width))
                best = (tile, micro, peak, overhead, enc_px, dec_px)
                if peak < 0.9 * HBM:
                    break
            if best[2] < 0.9 * HBM:
                break
        tile, micro, peak, overhead, _, _ = best
        tiles = math.ceil(height / tile) * math.ceil(width / tile) * chunks
        print(f"| {label}: {frames}x{height}x{width} | {batch} | {micro} x {batch // micro} | {tile} px ({overhead:.1f}x) | "
              f"{tiles} | {peak / GB:.1f} GB | {'yes' if peak < HBM else 'no'} |")
    print("\n(peak = weights and optimizer + what the clip keeps + the live causal caches of one tile + the largest "
          "tile-chunk region; 'fits' leaves 10 % for the allocator)")


if __name__ == "__main__":
    main()
