"""Training and inference memory: untiled vs the tiled, time-chunked, checkpointed forward (``model/bounded.py``).

    .venv/bin/python bench/memory.py                         # train section, CPU, fp32 (~30 min on 2 cores)
    .venv/bin/python bench/memory.py --sizes 5x640x640,5x768x768 --modes tiled-fixed --out memory-space.json
    .venv/bin/python bench/memory.py --sections infer        # reconstruct 1080p / 4K (/ 8K with --infer-sizes)
    .venv/bin/python bench/memory.py --device cuda --dtype bf16 --arch production   # a GPU box

Train: one training step (forward + backward, stage-2 objective: every term but LPIPS/DINO) per clip
size and mode, each in a fresh subprocess after one warm-up step (the same clip where the untiled
step also runs, so the time ratios compare warm steps; a 5x64² clip elsewhere). Where both run, the
step time comes from a second run under glibc's default malloc (see the mmap threshold below):

- ``untiled``: the plain forward through diffusers' own encode/decode loops;
- ``tiled-default``: the model's default plan (512 px tiles, time_chunk auto, nesting when
  the border caches pass ``nested_above_gb``): a clip narrower than one crop (tile + 2 halos) runs in
  chunks of as many latent frames as fit one full crop's 1-frame chunk (the sizes here: one region), so
  the extra time is the recompute alone;
- ``tiled-nested``: the same with nested checkpointing forced on (groups of ~sqrt(chunks) chunks);
- ``tiled-fixed``: a fixed ``--tile`` (default 128 px) with the exact halos, so the tile-chunk has the
  same size whatever the clip once the clip is wider than one crop (tile + 2 halos).

Reported: step time, peak RSS above the built model (``VmHWM`` after resetting it through
``/proc/self/clear_refs``) with and without the step's output reconstruction (the whole clip, outside
the bound by definition), the bytes autograd saves outside the checkpointed regions
(``saved_tensors_hooks``) and, on CUDA, ``max_memory_allocated``. Workers run with a fixed glibc mmap
threshold (``MALLOC_MMAP_THRESHOLD_``): otherwise freed activations stay in the heap and RSS reports
the allocator's high-water mark instead of live tensors. Untiled runs whose predicted memory exceeds
``--memory-fraction`` of available memory are skipped and said so.

Architectures: ``bench`` (default on CPU) is the Wan 2.2 VAE's real depth and kernels (so its real
receptive field: 160 px encoder halo, 15-cell decoder halo) at ``--width`` channels; ``production``
is the real Wan 2.2 TI2V-5B VAE at full width.

Infer: ``pyratok reconstruct`` (tiny model, default flags but ``--tile``) on generated clips of each
``--infer-sizes`` entry, each in a fresh process; peak RSS from ``wait4``. Target: 4K and 8K within
1.5x of 1080p at the same tile settings.

Writes ``bench/results/memory.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))
GiB, MiB = 2**30, 2**20

# Time grows at a fixed frame size (the default tile: one tile, more chunks), then space at a fixed tile.
TRAIN_SIZES = "5x64x64,9x128x128,17x256x256,33x256x256,65x256x256,129x256x256"
INFER_SIZES = {"1080p": (17, 1080, 1920), "4k": (17, 2160, 3840), "8k": (33, 4320, 7680)}


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+) kB", fh.read()).group(1)) * 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS


def build_model(arch: str, width: int, device: str):
    from pyratok.config import load
    from pyratok.model import PyraTok
    from pyratok.model.presets import production
    from pyratok.pipelines.train.stages import stage_config

    cfg = load("local")
    if arch == "production":
        model_cfg = production("wan2.2")
    else:
        model_cfg = cfg.model.model_copy(deep=True)
        model_cfg.backbone.arch = {"base_dim": width, "decoder_base_dim": width, "z_dim": 48, "num_res_blocks": 2}
    cfg = cfg.model_copy(update={"model": model_cfg})
    cfg = stage_config(cfg, 2)
    cfg.model.losses.lpips.enabled = False
    model = PyraTok.from_config(cfg.model).to(device)
    return model.train()


def worker(spec: dict) -> dict:
    import torch

    torch.manual_seed(0)
    device = spec["device"]
    model = build_model(spec["arch"], spec["width"], device)
    tiling = model.config.tiling
    tiling.train = spec["mode"] != "untiled"
    if spec["mode"] == "tiled-fixed":
        tiling.tile = spec["tile"]
    tiling.nested = "always" if spec["mode"] == "tiled-nested" else spec["nested"]
    from pyratok.model.bounded import resolve_nested
    from pyratok.model.tile_plan import plan_for

    frames, height, width = spec["size"]
    plan = plan_for(model, clip=(height, width))
    # the loader's uint8 frames, as the training loop feeds them (the tiled forward converts a crop at a time)
    video = torch.randint(0, 256, (1, 3, frames, height, width), generator=torch.Generator().manual_seed(1),
                          dtype=torch.uint8).to(device)
    texts = ["a benchmark clip"]
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16) if spec["dtype"] == "bf16" else None
    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):  # activations only: saved weights are the model's own memory
        if t.untyped_storage().data_ptr() not in weights:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def forward(clip):
        with autocast if autocast is not None else contextlib.nullcontext():
            return model(clip, texts, progress=0.5, keep_recon="none")  # as the loop's non-sampling steps

    # One-time costs (lazy initialisation, thread pools, first allocations, per-shape kernel choice) go
    # to a warm-up step: on the same clip where both modes run (the time ratios), else a small one.
    forward(video if spec.get("warmup") == "same" else video[:, :, :5, :64, :64]).loss.backward()
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _status("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward(video)
    out.loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    step_s = time.perf_counter() - started
    crop_enc = (plan.tile + 2 * plan.halo) * plan.cell
    crop_dec = (plan.decoder_tile + 2 * plan.decoder_halo) * plan.latent_stride
    return {
        "step_s": step_s,
        "peak_rss_bytes": _status("VmHWM") - base,
        # no reconstruction is kept (keep_recon="none"); the untiled forward still builds its own for the loss.
        # The uint8 input clip was allocated before the baseline
        "output_bytes": 0 if out.recon is None else out.recon.numel() * out.recon.element_size(),
        "saved_outer_bytes": sum(seen.values()),
        "cuda_peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
        "loss": float(out.loss),
        "saturated": min(height, width) >= max(crop_enc, crop_dec),
        "tile_chunks": plan.tile_chunks(frames, height, width),
        "plan": {"tile_px": plan.tile * plan.cell, "halo_px": plan.halo * plan.cell,
                 "decoder_halo_px": plan.decoder_halo * plan.latent_stride, "time_chunk": plan.time_chunk,
                 "nested": spec["nested"]},
        "nested": resolve_nested(model, plan, video),
    }


def _worker_env(malloc: str) -> dict:
    # glibc raises its mmap threshold after each large free (up to 32 MiB), after which freed
    # activations stay in the heap and RSS reports the allocator's high-water mark, not live
    # tensors; a fixed threshold maps every large tensor on its own, so peak RSS tracks live bytes
    # (this alone moved the nested-checkpoint comparison from "worse" to "better"). It costs page
    # faults on every large allocation, so step times are measured under glibc's default.
    # "caching" times steps the way a GPU's caching allocator runs them: glibc never maps a tensor on
    # its own and never hands freed memory back, so after the warm-up step nothing is faulted in again
    # (under the default, every tensor over the dynamic threshold is mmapped and faulted in per step,
    # which charges the tiled forward's many per-chunk tensors for page faults a GPU never takes).
    env = dict(os.environ)
    if malloc == "fixed":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    elif malloc == "caching":
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**62), MALLOC_TOP_PAD_=str(2**28))
    return env


def run_worker(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=_worker_env(spec.get("malloc", "fixed")))
    except subprocess.TimeoutExpired:
        return {"skipped": f"over the {timeout:.0f} s time limit"}
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-3:]
        return {"skipped": f"failed (rc {done.returncode}): {' | '.join(tail)}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_section(args) -> dict:
    import psutil

    results = {}
    available = psutil.virtual_memory().available if args.device == "cpu" else None
    for text in args.sizes.split(","):
        size = tuple(int(v) for v in text.split("x"))
        voxels = size[0] * size[1] * size[2]
        for mode in args.modes.split(","):
            spec = dict(size=size, mode=mode, tile=args.tile, device=args.device, dtype=args.dtype, arch=args.arch,
                        width=args.width, nested=args.nested,
                        warmup="same" if voxels * args.untiled_bytes_per_voxel <= args.memory_fraction * (available or 0)
                        else "small")
            predicted = voxels * args.untiled_bytes_per_voxel
            if mode == "untiled" and available is not None and predicted > args.memory_fraction * available:
                result = {"skipped": f"predicted {predicted / GiB:.1f} GiB > {args.memory_fraction:.0%} of available"}
            else:
                result = run_worker(spec, args.timeout_s)
                if spec["warmup"] == "same" and "skipped" not in result:
                    # the time ratios: a second run under --time-malloc (the fixed mmap threshold
                    # that makes RSS honest costs page faults on every large allocation)
                    timed = run_worker({**spec, "malloc": args.time_malloc}, args.timeout_s)
                    result["step_s_fixed_malloc"] = result["step_s"]
                    result["step_s"] = timed.get("step_s", float("nan"))
            results[f"{text}/{mode}"] = result
            print(_row(text, mode, result), flush=True)
    return results


def _row(size: str, mode: str, r: dict) -> str:
    if "skipped" in r:
        return f"| {size} | {mode} | skipped: {r['skipped']} | | | | |"
    cuda = f"{r['cuda_peak_bytes'] / GiB:.2f}" if r.get("cuda_peak_bytes") else "-"
    nested = ", nested" if r.get("nested") else ""
    return (f"| {size} | {mode}{nested} | {r['step_s']:.1f} | {r['peak_rss_bytes'] / GiB:.2f} | "
            f"{(r['peak_rss_bytes'] - r['output_bytes']) / GiB:.2f} | {r['saved_outer_bytes'] / MiB:.0f} | {cuda} |")


def summarize(results: dict) -> dict:
    """The bench's ratios: tiled peak growth (with and without the output clip), untiled growth, time ratios."""
    def ok(key):
        return key in results and "skipped" not in results[key]

    sizes = sorted({k.split("/")[0] for k in results}, key=lambda s: [int(v) for v in s.split("x")])
    out = {}

    def growth(mode: str, keep) -> None:
        series = [s for s in sizes if ok(f"{s}/{mode}") and keep(s)]
        if len(series) >= 2:
            first, last = results[f"{series[0]}/{mode}"], results[f"{series[-1]}/{mode}"]
            out[f"{mode}_peak_growth"] = {
                "from": series[0], "to": series[-1], "ratio": last["peak_rss_bytes"] / first["peak_rss_bytes"],
                "ratio_above_output": (last["peak_rss_bytes"] - last["output_bytes"])
                / (first["peak_rss_bytes"] - first["output_bytes"]),
            }

    # tiled-fixed: clips at least one crop wide; the others: time growth at the largest clip's frame size
    growth("tiled-fixed", lambda s: results[f"{s}/tiled-fixed"]["saturated"])
    if sizes:
        frame = sizes[-1].split("x", 1)[1]
        for mode in ("tiled-default", "tiled-nested"):
            growth(mode, lambda s: s.split("x", 1)[1] == frame)
    growth("untiled", lambda s: True)
    both = [s for s in sizes if ok(f"{s}/untiled") and ok(f"{s}/tiled-default")]
    if both:
        out["tiled_default_time_ratio"] = {s: results[f"{s}/tiled-default"]["step_s"] / results[f"{s}/untiled"]["step_s"]
                                           for s in both}
    return out


def infer_section(args) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="pyratok-bench-memory-") as tmp:
        model = Path(tmp) / "tiny"
        subprocess.run([sys.executable, "-m", "pyratok.cli.main", "model", "init", "--preset", "tiny", "--out", str(model)],
                       check=True, capture_output=True, cwd=REPO)
        for name in args.infer_sizes.split(","):
            # a name of INFER_SIZES, or FxHxW (e.g. 9x4320x7680: 8K with fewer frames, the same per-chunk peak)
            frames, height, width = INFER_SIZES.get(name) or tuple(int(v) for v in name.split("x"))
            video = Path(tmp) / f"{name}.mp4"
            subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                            f"testsrc2=size={width}x{height}:rate=24", "-frames:v", str(frames), "-pix_fmt", "yuv420p",
                            "-c:v", "libx264", "-preset", "ultrafast", str(video)], check=True)
            cmd = [sys.executable, "-m", "pyratok.cli.main", "reconstruct", "--model", str(model), "--video", str(video),
                   "--out", str(Path(tmp) / f"{name}-recon.mp4"), "--tile", str(args.infer_tile)]
            started = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
            _, status, usage = os.wait4(proc.pid, 0)
            line = proc.stdout.read().strip().splitlines()[-1:] if proc.stdout else []
            results[name] = {"frames": frames, "height": height, "width": width, "rc": os.waitstatus_to_exitcode(status),
                             "peak_rss_bytes": usage.ru_maxrss * 1024, "wall_s": time.perf_counter() - started,
                             "output": line[0] if line else ""}
            r = results[name]
            print(f"| {name} {frames}x{height}x{width} | rc {r['rc']} | {r['wall_s']:.0f} s | "
                  f"{r['peak_rss_bytes'] / GiB:.2f} GiB | {r['output']} |", flush=True)
    if "1080p" in results:
        base = results["1080p"]["peak_rss_bytes"]
        for name, r in results.items():
            r["vs_1080p"] = r["peak_rss_bytes"] / base
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker")
    parser.add_argument("--sections", default="train")
    parser.add_argument("--sizes", default=TRAIN_SIZES)
    parser.add_argument("--modes", default="untiled,tiled-default,tiled-nested")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--nested", choices=("auto", "always", "never"), default="auto",
                        help="model.tiling.nested for the tiled modes")
    parser.add_argument("--arch", choices=("bench", "production"), default="bench")
    parser.add_argument("--width", type=int, default=16, help="channels of the bench architecture (production: 160/256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--untiled-bytes-per-voxel", type=float, default=6000,
                        help="for skipping untiled runs that would not fit (bench arch at width 16, fp32)")
    parser.add_argument("--memory-fraction", type=float, default=0.6)
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--infer-sizes", default="1080p,4k")
    parser.add_argument("--infer-tile", type=int, default=512)
    parser.add_argument("--time-malloc", choices=("default", "caching"), default="caching",
                        help="allocator behaviour of the timing pass (caching: like a GPU's; default: glibc's own)")
    parser.add_argument("--out", default="memory.json", help="results file under bench/results/")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    report: dict = {"args": vars(args)}
    if "train" in args.sections:
        print("| clip | mode | step s | peak RSS GiB | above the output clip GiB | saved outside checkpoints MiB | "
              "CUDA peak GiB |")
        print("|---|---|---|---|---|---|---|")
        report["train"] = train_section(args)
        report["train_summary"] = summarize(report["train"])
        print(json.dumps(report["train_summary"], indent=2))
    if "infer" in args.sections:
        report["infer"] = infer_section(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
