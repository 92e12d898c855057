"""Training throughput: Ray Train + DeepSpeed and Ray Train + DDP vs a plain single-process torch loop,
and the data loader alone vs what a training step consumes, in one run on the same data.

    .venv/bin/python bench/train.py [--steps 20] [--batch 2] [--size 32] [--frames 5] [--threads 1] [--repeats 2]
    .venv/bin/python bench/train.py --gpu            # a GPU box: production-size model, 17x256x256, bf16 ZeRO-2

Equal work per step: every side trains the tiny PyraTok (stage-1 objective) on the same shards,
read by the same streaming reader (``--loader-workers`` DataLoader processes), at one fixed geometry, with the same
batch, AdamW and clipping, on the same number of CPU threads. The Ray sides use one worker, so the
comparison isolates what the framework adds (Ray Train session and reporting, DeepSpeed's engine
and ZeRO bookkeeping, DDP's wrapper) from parallel speed-up. Step times are steady-state: the
first ``--steps/2`` steps (compilation, warm-up) are excluded on every side. A shared box is noisy,
so the sides run ``--repeats`` times in turn (plain, deepspeed, ddp, plain, ...) and each side's
best figures count (its best step rate, its shortest run).

* plain: a torch loop in a fresh process with the same thread settings as a Ray worker
  (``OMP_NUM_THREADS`` = ``--threads``; the model is built before the clock starts);
* deepspeed / ddp: ``run_training`` (the real stage) with ``num_workers=1``; times come from the
  worker's own meter over the second half of the steps;
* loader: the reader alone, decoding the same batches as fast as it can.

Each training side also reports its whole run's wall time (process/worker start-up, model build,
engine set-up, every step, the final checkpoint): the fixed cost around the steps, not a target.

Targets: Ray Train + DeepSpeed step time <= 1.15x the plain loop; loader clips/s >= 2x the clips/s
a training step consumes. Writes ``bench/results/train.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

PATTERNS = ("testsrc2", "mandelbrot", "smptehdbars", "rgbtestsrc")


def make_dataset(root: Path, *, shards: int = 4, per_shard: int = 6) -> str:
    """Real h264 clips (720p, 2 s at 24 fps) in WebDataset shards with the ingest metadata fields."""
    if (root / "shards").is_dir() and len(list((root / "shards").glob("*.tar"))) == shards:
        return str(root)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    index = 0
    for shard in range(shards):
        with tarfile.open(root / "shards" / f"bench-{shard:06d}.tar", "w") as tar:
            for _ in range(per_shard):
                pattern = PATTERNS[index % len(PATTERNS)]
                with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
                    subprocess.run(
                        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size=1280x720:rate=24",
                         "-t", "2", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "veryfast", tmp.name],
                        check=True,
                    )  # fmt: skip
                    video = Path(tmp.name).read_bytes()
                key = f"manifest-bench{index:04d}-{pattern}"
                meta = {"key": key, "source": "manifest", "source_id": f"bench{index}.mp4", "width": 1280, "height": 720,
                        "fps": 24.0, "num_frames": 48, "duration_s": 2.0, "codec": "h264", "caption": f"{pattern} test pattern"}  # fmt: skip
                for ext, data in (("mp4", video), ("json", json.dumps(meta).encode()), ("txt", meta["caption"].encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                index += 1
    return str(root)


def bench_config(args, work: Path, strategy: str):
    from pyratok.pipelines.train.stages import load_stage_config

    half = max(1, args.steps // 2)
    overrides = [
        f"work_dir={work}", "tracking.enabled=false",
        f"train.stages.stage1.steps={args.steps}", f"train.stages.stage1.batch_size={args.batch}",
        f"train.stages.stage1.resolution={{min_side: {args.size}, max_side: {args.size}, step: 16}}",
        f"train.stages.stage1.frames={{min: {args.frames}, max: {args.frames}, step: 4}}",
        "train.data.aspect_ratios=['16:9']", "train.data.portrait=false", f"train.data.loader_workers={args.loader_workers}",
        f"train.scaling.num_workers={args.workers}", f"train.scaling.cpus_per_worker={args.threads}",
        f"train.scaling.use_gpu={str(args.gpu).lower()}",
        f"train.checkpoint.every_n_steps={args.steps}", "train.checkpoint.export_model=false",
        f"train.tracking.log_every_n_steps={half}", "train.tracking.progress_bar=false",
        f"train.strategy.name={strategy}",
    ]  # fmt: skip
    if args.gpu:
        overrides += ["train.strategy.deepspeed_config=infra/deepspeed/zero2-bf16.json", "train.strategy.precision=bf16"]
    cfg = load_stage_config("local", 1, overrides)
    if args.gpu:  # the production-size model (random Wan 2.2 VAE at full width) with stage 1's objective
        from pyratok.config import PyratokConfig
        from pyratok.model.presets import production
        from pyratok.pipelines.train.stages import stage_config

        data = cfg.model_dump(mode="json")
        data["model"], data["train"]["stage"] = production("wan2.2").model_dump(mode="json"), None
        cfg = stage_config(PyratokConfig.model_validate(data), 1, overrides)
    return cfg


def loader_only(cfg, data: str, batches: int) -> dict:
    """The reader alone (same spec as training): clips/s it can decode."""
    from pyratok.core.storage import Storage
    from pyratok.pipelines.train.data import LoaderTracker, ReaderSpec, find_shards, make_loader

    stage = cfg.train.current()
    storage = Storage(cfg.storage)
    spec = ReaderSpec(
        shards=find_shards(storage, data), storage=storage, data=cfg.train.data, resolution=stage.resolution,
        frames=stage.frames, batch_size=stage.batch_size, spatial_multiple=16, seed=cfg.train.seed,
    )  # fmt: skip
    tracker, clips, started = LoaderTracker(), 0, None
    for batch in make_loader(spec):
        if not tracker.observe(batch):
            continue
        if started is None:  # the first batch pays process start-up
            started = time.perf_counter()
            continue
        clips += batch["video"].shape[0]
        batches -= 1
        if batches <= 0:
            break
    seconds = time.perf_counter() - started
    return {"clips_per_s": clips / seconds, "seconds": seconds, "clips": clips}


def plain_loop(cfg, data: str, steps: int) -> dict:
    """What a straightforward script does: one process, DataLoader -> forward -> backward -> AdamW."""
    import torch

    from pyratok.core.storage import Storage
    from pyratok.model import PyraTok
    from pyratok.pipelines.train.data import LoaderTracker, ReaderSpec, find_shards, make_loader
    from pyratok.pipelines.train.loop import seed_everything, to_model_input

    torch.set_num_threads(int(cfg.train.scaling.cpus_per_worker))
    device = torch.device("cuda" if cfg.train.scaling.use_gpu else "cpu")
    seed_everything(cfg.train.seed)
    model = PyraTok.from_config(cfg.model).to(device)
    model.train()
    optim = cfg.train.optim
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)
    stage = cfg.train.current()
    storage = Storage(cfg.storage)
    spec = ReaderSpec(
        shards=find_shards(storage, data), storage=storage, data=cfg.train.data, resolution=stage.resolution,
        frames=stage.frames, batch_size=stage.batch_size, spatial_multiple=model.spatial_multiple, seed=cfg.train.seed,
    )  # fmt: skip
    tracker, done, clips, started = LoaderTracker(), 0, 0, None
    half = max(1, steps // 2)
    dtype = torch.bfloat16 if cfg.train.scaling.use_gpu else torch.float32
    for batch in make_loader(spec, pin_memory=device.type == "cuda"):
        if not tracker.observe(batch):
            continue
        if done == steps - half:
            started = time.perf_counter()
        video = to_model_input(batch["video"], device)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            out = model(video, batch["text"], progress=done / steps)
        out.loss.backward()
        if optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done += 1
        if started is not None:
            clips += video.shape[0]
        if done == steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"step_time_s": seconds / half, "clips_per_s": clips / seconds}


def plain_side(args, data: str) -> dict:
    """``plain_loop`` in a child process, so the baseline shares nothing with this Ray driver."""
    argv = [sys.executable, __file__, "--child-plain", "--data-dir", data, "--steps", str(args.steps), "--batch", str(args.batch),
            "--size", str(args.size), "--frames", str(args.frames), "--threads", str(args.threads),
            "--loader-workers", str(args.loader_workers)] + (["--gpu"] if args.gpu else [])  # fmt: skip
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYRATOK_LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"plain loop failed:\n{done.stderr[-3000:]}")
    # wall: the whole run (interpreter start, imports, model build, loader start-up, every step)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - started}


def ray_side(cfg, data: str) -> dict:
    from pyratok.pipelines.train.runner import run_training

    started = time.perf_counter()
    result = run_training(cfg, stage=1, data=data)
    wall = time.perf_counter() - started  # worker start-up, model build, engine init, steps, checkpoint
    metrics = result.metrics
    out = {"step_time_s": metrics["throughput/step_time_s"], "clips_per_s": metrics["throughput/clips_per_s"],
           "data_wait_fraction": metrics.get("data/wait_fraction"), "wall_s": wall}  # fmt: skip
    if "memory/peak_allocated_gb" in metrics:
        out["peak_memory_gb"] = metrics["memory/peak_allocated_gb"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per training process")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (1 = equal work per step)")
    parser.add_argument("--loader-workers", type=int, default=2, help="DataLoader processes (every side)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="production-size model, bf16, on CUDA")
    parser.add_argument("--sides", default="loader,plain,deepspeed,ddp")
    parser.add_argument("--child-plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gpu and args.size == 32:
        args.size, args.frames = 256, 17
    if args.child_plain:
        with tempfile.TemporaryDirectory(prefix="pyratok-bench-plain-") as tmp:
            print(json.dumps(plain_loop(bench_config(args, Path(tmp), "ddp"), args.data_dir, args.steps)))
        return

    from pyratok.core.logging import setup_logging
    from pyratok.core.ray_runtime import RayConfig, init_ray

    setup_logging(os.environ.get("PYRATOK_LOG_LEVEL", "WARNING"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = make_dataset(RESULTS / "train-data")
    init_ray(RayConfig(object_store_memory_mb=512))
    runs: dict[str, list[dict]] = {}
    sides = args.sides.split(",")

    def record(side: str, result: dict) -> None:
        runs.setdefault(side, []).append(result)
        extra = f"  {result['step_time_s']:.3f} s/step  {result['wall_s']:.1f} s run" if "step_time_s" in result else ""
        print(f"{side:11s} {result['clips_per_s']:8.2f} clips/s{extra}", flush=True)

    with tempfile.TemporaryDirectory(prefix="pyratok-bench-train-") as tmp:
        cfg = bench_config(args, Path(tmp) / "plain", "ddp")
        for repeat in range(args.repeats):
            if "loader" in sides:
                record("loader", loader_only(cfg, data, batches=4 * args.steps))
            if "plain" in sides:
                record("plain", plain_side(args, data))
            for strategy in ("deepspeed", "ddp"):
                if strategy in sides:
                    record(strategy, ray_side(bench_config(args, Path(tmp) / f"{strategy}{repeat}", strategy), data))
    results = {side: max(items, key=lambda r: r["clips_per_s"]) for side, items in runs.items()}
    for side, items in runs.items():  # the shortest run separately: another job's burst hits one figure or the other
        if "wall_s" in results[side]:
            results[side] = {**results[side], "wall_s": min(r["wall_s"] for r in items)}

    ratios = {}
    if "plain" in results:
        base = results["plain"]["step_time_s"]
        for strategy in ("deepspeed", "ddp"):
            if strategy in results:
                ratios[f"{strategy}_step_time_vs_plain"] = results[strategy]["step_time_s"] / base
                ratios[f"{strategy}_run_wall_vs_plain"] = results[strategy]["wall_s"] / results["plain"]["wall_s"]
        if "loader" in results:
            ratios["loader_headroom_vs_plain_step"] = results["loader"]["clips_per_s"] / results["plain"]["clips_per_s"]
    if "loader" in results and "deepspeed" in results:
        ratios["loader_headroom_vs_deepspeed_step"] = results["loader"]["clips_per_s"] / results["deepspeed"]["clips_per_s"]
    device = "cpu"
    if args.gpu:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda (not visible to the driver)"
    report = {"args": vars(args), "device": device, "host": platform.node(), "cpus": os.cpu_count(),
              "results": results, "runs": runs, "ratios": ratios}  # fmt: skip
    print()
    for name, value in ratios.items():
        print(f"{name:36s} {value:6.2f}x")
    print("targets: deepspeed_step_time_vs_plain <= 1.15x, loader headroom >= 2x")
    (RESULTS / ("train-gpu.json" if args.gpu else "train.json")).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
