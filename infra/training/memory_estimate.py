"""Per-GPU memory estimate of the paper-scale preset, from the real model at full width.

Builds PyraTok with the production Wan 2.2 VAE architecture (random weights, same shapes), counts
frozen and trainable parameters, then runs one training forward+backward at small probe geometries
and measures the bytes autograd keeps for backward (``saved_tensors_hooks``, each storage counted
once). Saved activations are a fixed part (text encoder, AR head at its token budget, DINO) plus a
part linear in the voxel count T*H*W (the convolutional VAE, LaPQ, fusion); a least-squares line
through the probes separates the two, and the estimate extrapolates the linear part to the
preset's geometries and adds the parameter and ZeRO-2 optimizer-state terms. Writes a markdown table (infra/training/README.md
quotes it).

    .venv/bin/python infra/training/memory_estimate.py [--probes 5x64x64,13x64x64,5x96x96]
"""

from __future__ import annotations

import argparse
import time

import torch

GB = 1024**3
QWEN_LM_PARAMS = 3.09e9  # Qwen2.5-VL-3B language model (text side of the alignment), frozen
DINOV3_L_PARAMS = 0.30e9  # DINOv3 ViT-L/16, frozen, stage 3 only
GPUS = 128
TARGETS = [  # (label, batch per GPU, frames, height, width)
    ("stage 1-2 mean draw: 57x1280x1280 (1:1)", 4, 57, 1280, 1280),
    ("stage 1-2 largest: 97x2048x2048 (1:1)", 4, 97, 2048, 2048),
    ("stage 1-2 largest, batch 1", 1, 97, 2048, 2048),
    ("stage 3 largest: 97x4096x4096, batch 2", 2, 97, 4096, 4096),
    ("stage 1-2 smallest: 17x512x512", 4, 17, 512, 512),
    ("fits in 80 GB at batch 4: 17x256x256", 4, 17, 256, 256),
]


def build_model():
    from pyratok.model import PyraTok
    from pyratok.model.presets import production
    from pyratok.pipelines.train.stages import stage_config
    from pyratok.config import load

    cfg = load("local")
    cfg = cfg.model_copy(update={"model": production("wan2.2")})
    cfg = stage_config(cfg, 2)  # stage 2: the full objective except DINO (DINO's cost is constant)
    model = PyraTok.from_config(cfg.model)
    model.train()
    return model


def saved_bytes(model, frames: int, size: int) -> tuple[int, float]:
    """Bytes saved for backward by one training step at (1, 3, frames, size, size)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    video = torch.rand(1, 3, frames, size, size) * 2 - 1
    started = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(video, ["a probe clip"], progress=0.5)
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values()), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probes", default="5x64x64,13x64x64,5x96x96")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model()
    trainable = sum(p.numel() for p in model.trainable_parameters())
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    text = sum(p.numel() for p in model.text_encoder.parameters())
    vae = sum(p.numel() for p in model.backbone.parameters() if not p.requires_grad)
    print(f"trainable params: {trainable / 1e6:.1f} M; frozen: {frozen / 1e6:.1f} M (VAE {vae / 1e6:.1f} M, text stand-in {text / 1e6:.1f} M)")

    points = []
    for probe in args.probes.split(","):
        frames, height, width = (int(v) for v in probe.split("x"))
        assert height == width
        nbytes, seconds = saved_bytes(model, frames, height)
        points.append((frames * height * width, nbytes))
        print(f"probe {probe}: {nbytes / 2**20:.1f} MiB saved for backward (fp32), {seconds:.1f}s")
    import numpy as np

    voxels, saved = (np.array(v, dtype=np.float64) for v in zip(*points))
    slope, intercept = np.polyfit(voxels, saved, 1)
    residual = float(np.max(np.abs(saved - (slope * voxels + intercept)) / saved))
    print(f"fit: {intercept / 2**20:.0f} MiB fixed + {slope:.0f} B per input voxel (fp32); max residual {residual:.1%}")
    bf16 = slope / 2
    fixed_act = intercept / 2

    # Parameters (bf16 on the GPU) and ZeRO-2: fp32 master + Adam m, v of the trainable
    # parameters partitioned over the data-parallel group; bf16 gradients partitioned too.
    frozen_all = vae + QWEN_LM_PARAMS + DINOV3_L_PARAMS
    weights = (frozen_all + trainable) * 2
    optimizer = trainable * (4 + 4 + 4) / GPUS
    grads = trainable * 2 / GPUS + trainable * 2  # reduce buckets hold a full bf16 copy transiently
    fixed = weights + optimizer + grads
    print()
    print(f"| term | GB per GPU |")
    print(f"|---|---|")
    print(f"| frozen weights, bf16 (VAE {vae / 1e9:.2f} B + Qwen2.5-VL-3B LM {QWEN_LM_PARAMS / 1e9:.2f} B + DINOv3-L {DINOV3_L_PARAMS / 1e9:.2f} B) | {frozen_all * 2 / GB:.2f} |")
    print(f"| trainable weights, bf16 ({trainable / 1e6:.0f} M) | {trainable * 2 / GB:.3f} |")
    print(f"| AdamW fp32 master + m + v, ZeRO-2 over {GPUS} GPUs | {optimizer / GB:.4f} |")
    print(f"| gradients (partitioned + one bucketed full copy) | {grads / GB:.3f} |")
    print(f"| activations, fixed part (text, AR head at its token budget), bf16 | {fixed_act / GB:.2f} |")
    print(f"| activations per input voxel, bf16 (measured {slope:.0f} B in fp32) | {bf16:.0f} B |")
    print()
    print("| geometry | batch | activations GB | total GB | fits 80 GB |")
    print("|---|---|---|---|---|")
    for label, batch, frames, height, width in TARGETS:
        act = bf16 * batch * frames * height * width + fixed_act
        total = act + fixed
        print(f"| {label} | {batch} | {act / GB:,.0f} | {total / GB:,.0f} | {'yes' if total < 80 * GB else 'no'} |")


if __name__ == "__main__":
    main()
