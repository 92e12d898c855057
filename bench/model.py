"""PyraTok throughput: tokens/s of ``encode`` and of one training step, tiny and production-size model.

    .venv/bin/python bench/model.py [--presets tiny,wan2.2] [--geometry 17x256x256] [--batch 1]
    .venv/bin/python bench/model.py --device cuda --dtype bf16        # a GPU box

Models are built from their configs with random weights (``model/presets.py``): ``tiny`` (the CI
preset) and ``wan2.2`` (the production Wan 2.2 TI2V-5B VAE architecture at full width, LoRA r16,
LaPQ/fusion/AR head at paper sizes; the bundled MiniLM stands in for the Qwen2.5-VL text encoder).
The objective is stage 2's (every term but DINO; LPIPS off: no VGG weights offline), built like
``infra/training/memory_estimate.py`` does. On the same random video batch:

* encode: ``model.encode(video, texts)`` (no grad, eval) -> TokenPyramid;
* train step: ``model(video, texts)`` (masking, all losses) -> ``loss.backward()`` -> grad clip 1.0 ->
  AdamW step -> ``zero_grad``; i.e. the DDP strategy's micro step + step, without the framework.

tokens = ids over all four pyramid levels. Each (preset, mode) runs in a fresh subprocess; the
first call is a warm-up unless it takes longer than ``--slow-s`` (then it is the measurement and
the report says so), further calls run until ``--repeats`` or ``--budget-s``; the best counts.
Peak memory: CPU resident high-water mark above the built model; CUDA max_memory_allocated.
A production train step whose predicted activations (the per-voxel figure memory_estimate.py
measured) exceed ``--memory-fraction`` of the available memory is not run at the main geometry:
it is reported as skipped and measured at ``--train-fallback`` instead. ``--dtype bf16`` runs
under ``torch.autocast`` (as the DDP strategy does). Writes ``bench/results/model.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

MODES = ("encode", "train")
# Activations a production train step keeps for backward, fp32 (infra/training/README.md, measured
# by memory_estimate.py as 1.6 GB + 14.7 KB per input voxel in bf16): fixed bytes, bytes per voxel.
PRODUCTION_ACTIVATIONS_FP32 = (3.2e9, 29_400)
GiB = 2**30


def parse_geometry(text: str) -> tuple[int, int, int]:
    frames, height, width = (int(v) for v in text.lower().split("x"))
    return frames, height, width


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+) kB", fh.read()).group(1)) * 1024


def available_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as fh:
        return int(re.search(r"MemAvailable:\s+(\d+) kB", fh.read()).group(1)) * 1024


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return f"{model.group(1) if model else platform.processor()} ({os.cpu_count()} cores)"


# -- worker: one preset, one mode, in its own process ---------------------------------------------
def build_model(preset_name: str, device: str):
    from pyratok.config import load
    from pyratok.model import PyraTok
    from pyratok.model.presets import preset
    from pyratok.pipelines.train.stages import stage_config

    cfg = load("local")
    cfg = stage_config(cfg.model_copy(update={"model": preset(preset_name)}), 2)
    return PyraTok.from_config(cfg.model).to(device)


def worker(args) -> dict:
    import contextlib

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, mode = args.device, args.worker
    frames, height, width = parse_geometry(args.geometry)
    started = time.perf_counter()
    model = build_model(args.presets, device)
    build_s = time.perf_counter() - started
    trainable = sum(p.numel() for p in model.trainable_parameters())
    total = sum(p.numel() for p in model.parameters())
    result = {"preset": args.presets, "mode": mode, "geometry": args.geometry, "batch": args.batch,
              "build_s": build_s, "params_m": total / 1e6, "trainable_m": trainable / 1e6}

    if mode == "train" and args.presets != "tiny" and device == "cpu":
        fixed, per_voxel = PRODUCTION_ACTIVATIONS_FP32
        need = fixed + per_voxel * args.batch * frames * height * width
        free = available_bytes(device)
        if need > args.memory_fraction * free:
            result["skipped"] = (f"predicted activations {need / GiB:.1f} GiB (fp32) > {args.memory_fraction:.0%} "
                                 f"of {free / GiB:.1f} GiB available")
            return result

    video = torch.rand(args.batch, 3, frames, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    video = video.to(device)
    texts = ["a red car drives along a coastal road at sunset"] * args.batch
    cast = (torch.autocast(device, dtype=torch.bfloat16) if args.dtype == "bf16" else contextlib.nullcontext)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    if mode == "encode":
        model.eval()

        def call():
            with cast():
                return model.encode(video, texts).num_tokens * args.batch
    else:
        model.train()
        params = model.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=1e-5)

        def call():
            with cast():
                out = model(video, texts, progress=0.5)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            result["losses"] = sorted(out.losses)
            return out.pyramid.num_tokens * args.batch

    # Peak above the built model and inputs (CPU: reset VmHWM to the current RSS).
    if device == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = _status("VmRSS")

    times, first_s, tokens = [], None, 0
    started = time.perf_counter()
    while len(times) < args.repeats:
        sync()
        t0 = time.perf_counter()
        tokens = call()
        sync()
        elapsed = time.perf_counter() - t0
        if first_s is None:
            first_s = elapsed
            if elapsed <= args.slow_s:
                continue  # warm-up: kernel selection, allocator, lazy init
        times.append(elapsed)
        if time.perf_counter() - started > args.budget_s:
            break
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _status("VmHWM")) - base
    best = min(times)
    result.update({"tokens": tokens, "first_s": first_s, "warmed_up": first_s <= args.slow_s, "times_s": times,
                   "best_s": best, "tokens_per_s": tokens / best, "clips_per_s": args.batch / best,
                   "peak_bytes": peak})
    return result


# -- driver -----------------------------------------------------------------------------------------
def run_worker(args, preset_name: str, mode: str, geometry: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--presets", preset_name, "--geometry", geometry,
           "--batch", str(args.batch), "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--budget-s", str(args.budget_s), "--slow-s", str(args.slow_s),
           "--memory-fraction", str(args.memory_fraction)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        reason = f"worker failed (rc {proc.returncode}): {proc.stderr.strip().splitlines()[-1:] or ''}"
        print(f"{preset_name} {mode} {geometry}: {reason}", flush=True)
        return {"preset": preset_name, "mode": mode, "geometry": geometry, "error": reason,
                "stderr_tail": proc.stderr[-3000:]}
    result = json.loads(lines[-1][len("RESULT "):])
    result["wall_s"] = time.perf_counter() - started
    return result


def describe(r: dict) -> str:
    head = f"{r['preset']:>7} {r['mode']:<6} {r['geometry']:>11} x{r.get('batch', 1)}"
    if "error" in r:
        return f"{head}: {r['error']}"
    if "skipped" in r:
        return f"{head}: skipped, {r['skipped']}"
    note = "" if r["warmed_up"] else " (first call included: it took longer than --slow-s, so no separate warm-up)"
    return (f"{head}: {r['tokens_per_s']:10,.1f} tokens/s, {r['best_s']:8.2f} s/call, {r['tokens']:,} tokens, "
            f"peak +{r['peak_bytes'] / GiB:.2f} GiB, {len(r['times_s'])} timed{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,wan2.2", help="comma-separated: tiny, tiny-wan2.1, wan2.2, wan2.1")
    parser.add_argument("--modes", default="encode,train")
    parser.add_argument("--geometry", default="17x256x256", help="frames x height x width")
    parser.add_argument("--train-fallback", default="5x64x64",
                        help="geometry for a production train step that does not fit at --geometry ('' = none)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None, help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3, help="timed calls at most (after the warm-up)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="no further timed calls once this is spent")
    parser.add_argument("--slow-s", type=float, default=120.0,
                        help="a first call slower than this is the measurement (no separate warm-up)")
    parser.add_argument("--memory-fraction", type=float, default=0.6)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")

    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    print(f"device: {device_name(args.device)}; dtype {args.dtype}; threads {args.threads}; "
          f"geometry {args.geometry}, batch {args.batch}", flush=True)
    rows = []
    for preset_name in args.presets.split(","):
        for mode in args.modes.split(","):
            row = run_worker(args, preset_name, mode, args.geometry)
            rows.append(row)
            print(describe(row), flush=True)
            if row.get("skipped") and mode == "train" and args.train_fallback:
                rows.append(run_worker(args, preset_name, mode, args.train_fallback))
                print(describe(rows[-1]), flush=True)

    def rate(preset_name: str, mode: str) -> float | None:
        return next((r["tokens_per_s"] for r in rows if r["preset"] == preset_name and r["mode"] == mode
                     and r["geometry"] == args.geometry and "tokens_per_s" in r), None)

    for preset_name in args.presets.split(","):
        enc, train = rate(preset_name, "encode"), rate(preset_name, "train")
        if enc and train:
            print(f"{preset_name}: a train step processes tokens {enc / train:.1f}x slower than encode")
    names = args.presets.split(",")
    if len(names) > 1 and rate(names[0], "encode") and rate(names[1], "encode"):
        slower = rate(names[0], "encode") / rate(names[1], "encode")
        print(f"encode: {names[1]} is {slower:.0f}x slower than {names[0]}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"device": device_name(args.device), "dtype": args.dtype, "threads": args.threads,
              "geometry": args.geometry, "batch": args.batch, "rows": rows,
              "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    (RESULTS / "model.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS / 'model.json'}")


if __name__ == "__main__":
    main()
