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

4. the AR head's window (``--ar vlm``, the presets' AR head: Qwen2.5-VL-3B's LM with LoRA, measured
   at full width on 1 and 2 layers; ``--ar transformer``: the small one, measured in part 2's probe).

Peak per GPU = weights (bf16) + ZeRO-2 optimizer and gradient terms + the input clip (uint8, as the
loader gives it; no reconstruction is kept on the GPU) + parts 2 and 4 + part 3 + the largest of
part 1's regions. Writes the markdown tables that ``infra/training/README.md`` quotes.

    .venv/bin/python infra/training/memory_estimate.py            # ~5 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from dataclasses import dataclass

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


def build_model(tile: int, arch: str = "production", width: int = 16):
    from pyratok.config import load
    from pyratok.model import PyraTok
    from pyratok.model.presets import production
    from pyratok.pipelines.train.stages import stage_config

    cfg = load("local")
    if arch == "production":
        model_cfg = production("wan2.2")
    else:  # bench/memory.py's architecture: Wan 2.2 depth and kernels at `width` channels
        model_cfg = cfg.model.model_copy(deep=True)
        model_cfg.backbone.arch = {"base_dim": width, "decoder_base_dim": width, "z_dim": 48, "num_res_blocks": 2}
    cfg = cfg.model_copy(update={"model": model_cfg})
    cfg = stage_config(cfg, 2)  # stage 2: the full objective except DINO (DINO's cost is constant)
    cfg.model.tiling.tile = tile
    model = PyraTok.from_config(cfg.model)
    return model.train()


class SavedBytes:
    """Activation bytes autograd saves, split by the region kind that was running (``phase``).

    Weights that autograd keeps (a conv saves its weight for the input's gradient) are the model's
    own memory, counted once in the weights row, so they are left out here (``excluded``, with the
    input clip where a probe counts it on its own).
    """

    def __init__(self, model):
        self.phase = "outside"
        self.by_phase: dict[str, dict[int, int]] = {}
        self.excluded = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.excluded |= {b.untyped_storage().data_ptr() for b in model.buffers()}

    def pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.excluded:
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
    # the loader's uint8 clip, as training feeds it; its storage is the input term (3 B per voxel), not counted here
    video = torch.randint(0, 256, (1, 3, frames, side, side), dtype=torch.uint8)
    meter.excluded.add(video.untyped_storage().data_ptr())
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

    # As at paper scale: several tiles (here a 32 px tile, its crop clipped to the frame), so the causal
    # caches at chunk borders live inside each tile's checkpoint, not in what the clip keeps. The
    # decoder head's group borders (whole frames) stay in it, counted linearly in voxels (an overcount).
    tiling = model.config.tiling
    saved = tiling.model_copy()
    tiling.nested, tiling.tile, tiling.train_tiles = "always", 32, []
    head.forward_window = ar_phase
    try:
        with meter.hooks():
            out = model(video, ["a probe clip"], progress=0.5, keep_recon="none")
        out.loss.backward()
        model.zero_grad(set_to_none=True)
    finally:
        model.config.tiling = saved
        del head.forward_window
    return meter.total("outside"), meter.total("ar"), tokens[0]


# Qwen2.5-VL-3B's language model (its text config): the paper preset's AR head backbone (ar.backend=hf).
QWEN25_VL_3B_TEXT = dict(hidden_size=2048, intermediate_size=11008, num_attention_heads=16, num_key_value_heads=2,
                         num_hidden_layers=36, rms_norm_eps=1e-6, rope_theta=1e6)


def vlm_ar_probe(model) -> float:
    """fp32 bytes one clip's AR window costs when the AR head is Qwen2.5-VL-3B's LM (LoRA, gradient checkpointing).

    The LM is built at full width with 1 and 2 layers (random weights, a small vocabulary: it is fed embeddings)
    and run at the full token budget: with checkpointing, each layer keeps its input for backward (the slope
    over layers); without it, one layer's activations are what backward recomputes at a time. The window then
    costs 36 kept inputs + one layer recomputed.
    """
    from transformers import Qwen2Config, Qwen2Model

    from pyratok.model.ar_head import ArHead, HfCausalBackbone
    from pyratok.model.text_encoder import TextEmbedding

    cfg = model.config.ar.model_copy(update={"backend": "hf"})
    sizes = dict(QWEN25_VL_3B_TEXT)
    layers = sizes.pop("num_hidden_layers")
    tokens = cfg.max_text_tokens + 1 + cfg.token_budget + len(model.lapq.grids) - 1
    per_setting = {}
    for checkpointing in (True, False):
        for depth in (1, 2):
            lm = Qwen2Model(Qwen2Config(vocab_size=64, num_hidden_layers=depth, **sizes))
            backbone = HfCausalBackbone(lm, lora_rank=cfg.hf_lora_rank or 16, lora_alpha=cfg.hf_lora_alpha,
                                        checkpointing=checkpointing)
            head = ArHead(cfg=cfg, code_bits=model.config.lapq.code_bits, text_dim=sizes["hidden_size"],
                          num_levels=1, backbone=backbone).train()
            meter = SavedBytes(head)
            bits = torch.randn(1, 1, 1, cfg.token_budget, model.config.lapq.code_bits, requires_grad=True)
            text = torch.randn(1, cfg.max_text_tokens, sizes["hidden_size"])
            emb = TextEmbedding(tokens=text, mask=torch.ones(1, cfg.max_text_tokens, dtype=torch.bool), pooled=text[:, 0])
            with meter.hooks():
                out = head.forward_window([bits], emb, window=None)
            out.loss.backward()
            per_setting[(checkpointing, depth)] = meter.total("outside")
    kept = per_setting[(True, 2)] - per_setting[(True, 1)]
    layer = per_setting[(False, 2)] - per_setting[(False, 1)]
    fixed = per_setting[(True, 1)] - kept
    print(f"VLM AR probe ({tokens} tokens): {kept / 2**20:.0f} MiB kept per layer, {layer / 2**20:.0f} MiB per layer "
          f"recomputed, {fixed / 2**20:.0f} MiB outside the layers (fp32)")
    return layers * kept + layer + fixed


def vlm_ar_trainable(model) -> int:
    """Parameters the VLM AR head trains: LoRA on every projection of the 36 layers + bits in/out, level/BOS/SEP."""
    cfg, bits, q = model.config.ar, model.config.lapq.code_bits, QWEN25_VL_3B_TEXT
    hidden, inter = q["hidden_size"], q["intermediate_size"]
    kv = hidden // q["num_attention_heads"] * q["num_key_value_heads"]
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, inter), (hidden, inter), (inter, hidden)]
    rank = cfg.hf_lora_rank or 16
    lora = q["num_hidden_layers"] * sum(rank * (a + b) for a, b in shapes)
    text_in = (hidden + 1) * hidden if cfg.max_text_tokens > 0 else 0
    return lora + 2 * bits * hidden + bits + hidden + text_in + (len(model.lapq.grids) + 2) * hidden


def fit(xs, ys):
    slope, intercept = np.polyfit(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64), 1)
    return float(slope), float(intercept)


@dataclass
class Measured:
    """The probes' figures, fp32 bytes, that every prediction combines."""

    lines: dict[str, tuple[float, float]]
    """Region kind -> (bytes per crop pixel, intercept) for one 4-frame chunk."""
    per_voxel: float
    persist_fixed: float
    ar_window: float
    """One clip's AR window (the AR head's activations at its token budget), fp32 bytes."""
    enc_cache: float
    """Causal-cache values per crop pixel at one chunk border (encoder; decoder tail below)."""
    dec_cache: float

    def region(self, kind: str, crop_pixels: float) -> float:
        slope, intercept = self.lines[kind]
        return max(0.0, slope * crop_pixels + intercept)


def activation_peak(m: Measured, plan, frames: int, height: int, width: int, *, micro: int, tile: int,
                    value_bytes: int) -> dict[str, float]:
    """What one micro-batch of clips holds at the step's peak, by term (``value_bytes``: 2 bf16, 4 fp32).

    The peak is in backward of the widest tile-chunk, with nesting on (``nested: auto`` turns it on
    past ``nested_above_gb`` of border caches): the clip's kept tensors, the causal caches of one tile's group
    borders plus one group's (2 per chunk border and causal conv), and that region recomputed.
    """
    scale = value_bytes / 4  # the probes ran in fp32
    halo_px, dec_halo_px = plan.halo * plan.cell, plan.decoder_halo * plan.latent_stride
    chunks = len(plan.chunks(frames))
    group = max(1, round(math.sqrt(chunks)))
    live = math.ceil(chunks / group) + group if chunks > group else chunks
    enc_px = min(tile + 2 * halo_px, height) * min(tile + 2 * halo_px, width)
    dec_px = min(tile + 2 * dec_halo_px, height) * min(tile + 2 * dec_halo_px, width)
    regions = max(m.region("encode_region", enc_px), m.region("decode_region", dec_px),
                  m.region("decoder_head", height * width))
    return {
        # kept tensors (probed in fp32, scaled) + the uint8 input clip (3 channels); no reconstruction is kept
        "clip": micro * frames * height * width * (m.per_voxel * scale + 3) + (m.persist_fixed + micro * m.ar_window) * scale,
        "caches": micro * live * value_bytes * max(m.enc_cache * enc_px, m.dec_cache * dec_px),
        "region": micro * regions * scale,
        "halo_compute": (enc_px + dec_px) / (2 * min(tile, height) * min(tile, width)),
    }


def measure(model, args) -> Measured:
    started = time.perf_counter()
    probes = {}
    for side in (int(v) for v in args.region_probes.split(",")):
        probes[side] = region_probe(model, side)
        print(f"region probe {side}px: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in probes[side].items()))
    sides = sorted(probes)
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
    from pyratok.model.streaming import cache_values_per_pixel

    enc_cache, dec_cache = cache_values_per_pixel(model)
    print(f"probes took {time.perf_counter() - started:.0f} s")
    if args.ar == "vlm":
        ar_bytes = vlm_ar_probe(model)
    return Measured(lines=lines, per_voxel=per_voxel, persist_fixed=max(0.0, persist_fixed), ar_window=ar_bytes,
                    enc_cache=enc_cache, dec_cache=dec_cache)


def check(m: Measured, plan, sizes: str) -> None:
    """Predictions for ``bench/memory.py``'s clips (fp32, one clip, its default tile) to hold against its peak RSS."""
    print("\n| clip (fp32, bench check) | clip terms | caches | region | predicted activations |")
    print("|---|---|---|---|---|")
    for text in sizes.split(","):
        frames, height, width = (int(v) for v in text.split("x"))
        p = activation_peak(m, plan, frames, height, width, micro=1, tile=plan.tile * plan.cell, value_bytes=4)
        total = p["clip"] + p["caches"] + p["region"]
        print(f"| {text} | {p['clip'] / GB:.2f} GB | {p['caches'] / GB:.2f} GB | {p['region'] / GB:.2f} GB | "
              f"{total / GB:.2f} GB |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--region-probes", default="48,80", help="crop sides (px) of the one-tile probes")
    parser.add_argument("--clip-probes", default="9x64,17x64", help="frames x side of the persistent probes")
    parser.add_argument("--arch", choices=("production", "bench"), default="production")
    parser.add_argument("--ar", choices=("vlm", "transformer"), default="vlm",
                        help="AR head: Qwen2.5-VL-3B's LM with LoRA (the paper and cluster presets) or the small transformer")
    parser.add_argument("--width", type=int, default=16, help="channels of the bench architecture")
    parser.add_argument("--check", default="",
                        help="with --arch bench: FxHxW clips to predict for comparison with bench/memory.py's peak RSS")
    args = parser.parse_args()
    from pyratok.model.tile_plan import plan_for

    torch.manual_seed(0)
    model = build_model(args.tile, args.arch, args.width)
    plan = plan_for(model)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    if args.ar == "vlm":  # the small transformer AR head out, the LM's LoRA and the bit projections in
        trainable += vlm_ar_trainable(model) - sum(p.numel() for p in model.ar_head.parameters() if p.requires_grad)
    vae = sum(p.numel() for p in model.backbone.parameters() if not p.requires_grad)
    print(f"trainable {trainable / 1e6:.1f} M; frozen VAE {vae / 1e6:.1f} M; plan: tile {plan.tile * plan.cell} px, "
          f"encoder halo {plan.halo * plan.cell} px, decoder halo {plan.decoder_halo * plan.latent_stride} px, "
          f"chunk {plan.time_chunk} latent frame(s)")
    m = measure(model, args)
    if args.check:
        check(m, plan, args.check)
        return

    frozen_all = vae + QWEN_LM_PARAMS + DINOV3_L_PARAMS
    weights = (frozen_all + trainable) * 2
    optimizer = trainable * 12 / GPUS
    grads = trainable * 2 / GPUS + trainable * 2
    fixed = weights + optimizer + grads
    enc_crop = (plan.tile + 2 * plan.halo) * plan.cell
    dec_crop = (plan.decoder_tile + 2 * plan.decoder_halo) * plan.latent_stride

    print()
    print("| term | per GPU |")
    print("|---|---|")
    print(f"| frozen weights, bf16 (VAE {vae / 1e9:.2f} B + Qwen2.5-VL-3B LM + DINOv3-L) | {frozen_all * 2 / GB:.1f} GB |")
    print(f"| trainable {trainable / 1e6:.0f} M: bf16 weights + ZeRO-2 AdamW state and gradients over {GPUS} GPUs | "
          f"{(trainable * 2 + optimizer + grads) / GB:.2f} GB |")
    print(f"| one encoder tile-chunk (crop {enc_crop}² x 4 frames), recomputed, bf16 | "
          f"{m.region('encode_region', enc_crop ** 2) / 2 / GB:.1f} GB |")
    print(f"| one decoder-tail tile-chunk (crop {dec_crop}² x 4 frames), recomputed, bf16 | "
          f"{m.region('decode_region', dec_crop ** 2) / 2 / GB:.1f} GB |")
    ar_name = "Qwen2.5-VL-3B LM + LoRA, checkpointed" if args.ar == "vlm" else "small transformer"
    print(f"| kept for the whole clip outside the regions, bf16 | {m.per_voxel / 2:.1f} B per voxel + "
          f"{m.persist_fixed / 2 / GB:.2f} GB + {m.ar_window / 2 / GB:.2f} GB per clip (AR head, {ar_name}, at its "
          f"{model.config.ar.token_budget}-token budget) |")
    print("| input clip, uint8 (no reconstruction kept: a sample image takes the first clip's, on the CPU) | 3 B per voxel |")
    print(f"| causal caches at one chunk border, bf16 | {m.enc_cache * 2:.0f} (encoder) / {m.dec_cache * 2:.0f} (decoder) "
          "B per crop pixel |")
    print()
    print("| geometry | batch/GPU | micro-batch x accumulation | tile (halo compute x) | tile-chunks per clip | "
          "clip terms | live caches | tile-chunk | peak per GPU | fits 80 GB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, batch, frames, height, width in TARGETS:
        best = None
        for tile in (512, 384, 256):
            for micro in (batch, 2, 1):
                if batch % micro:
                    continue
                p = activation_peak(m, plan, frames, height, width, micro=micro, tile=tile, value_bytes=2)
                peak = fixed + p["clip"] + p["caches"] + p["region"]
                best = (tile, micro, peak, p)
                if peak < 0.9 * HBM:
                    break
            if best[2] < 0.9 * HBM:
                break
        tile, micro, peak, p = best
        tiles = math.ceil(height / tile) * math.ceil(width / tile) * len(plan.chunks(frames))
        print(f"| {label}: {frames}x{height}x{width} | {batch} | {micro} x {batch // micro} | {tile} px "
              f"({p['halo_compute']:.1f}x) | {tiles} | {p['clip'] / GB:.1f} GB | {p['caches'] / GB:.1f} GB | "
              f"{p['region'] / GB:.1f} GB | {peak / GB:.1f} GB | {'yes' if peak < HBM else 'no'} |")
    print("\n(peak = weights and optimizer + what the clip keeps + the live causal caches of one tile + the largest "
          "tile-chunk region; a row takes the largest tile and micro-batch under 90 % of 80 GB)")


if __name__ == "__main__":
    main()
