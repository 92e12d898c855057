"""Ingest throughput vs the floor of the work and vs video2dataset, measured side by side in one run.

    .venv/bin/python bench/ingest.py [--clips 200] [--no-v2d]

On a generated corpus of ``--clips`` plain OpenVid-layout mp4s (720p/1080p h264, all accepted,
no re-encode needed) it times, on the same files and the same cores:

* floor: ``ffprobe`` of every file (the same command ingest runs, one process per core) + a
  plain byte copy of every file — the least work any ingest must do;
* ``pyratok ingest``: the real Ray Data job (probe, filter, plan, shard write, manifest), on a
  local Ray started before timing (cold: fresh workers; warm: a second run with ``--overwrite``), and once more
  with the integrity checks off (what truncation/corruption checks and the content hash cost);
* video2dataset 1.3.0 with its FFProbeSubsampler (probe + copy into WebDataset shards), run from
  its own venv ``bench/.venv-v2d`` if it exists (see bench/README.md; never installed into .venv).

Prints videos/s and MB/s of each and the ratios; writes ``bench/results/ingest.json``.
Targets: ingest time <= 1.5x the floor; ingest videos/s per core > video2dataset's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
V2D_PYTHON = REPO / "bench" / ".venv-v2d" / "bin" / "python"

V2D_DRIVER = r"""
import importlib.machinery, json, sys, time, types
# video2dataset 1.3.0 pins torch/torchaudio 2.1.2; its venv here has the CPU torch 2.13 and no
# torchaudio wheel fits it. Only its audio *decoder* module imports torchaudio (at import time);
# the measured path (read file -> ffprobe subsampler -> webdataset writer) never calls it.
for name in ("torchaudio", "torchaudio.functional"):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = module
sys.modules["torchaudio"].functional = sys.modules["torchaudio.functional"]
from video2dataset import video2dataset


def main():
    url_list, out, processes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = {
        "subsampling": {"FFProbeSubsampler": {"args": {"extract_keyframes": False}}},
        "reading": {"yt_args": {"download_size": 360, "download_audio_rate": 44100, "yt_metadata_args": None},
                    "timeout": 60, "sampler": None},
        "storage": {"number_sample_per_shard": 64, "oom_shard_count": 5, "captions_are_subtitles": False},
        "distribution": {"processes_count": processes, "thread_count": 4, "subjob_size": 1000,
                         "distributor": "multiprocessing"},
    }
    start = time.perf_counter()
    video2dataset(url_list=url_list, input_format="csv", url_col="url", caption_col="caption",
                  output_folder=out, output_format="webdataset", encode_formats={"video": "mp4"},
                  enable_wandb=False, config=config)
    print("V2D_RESULT " + json.dumps({"wall_s": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":  # video2dataset spawns workers that re-import this file
    main()
"""


def make_corpus(work: Path, clips: int) -> tuple[Path, list[Path]]:
    """The sample corpus with ``clips`` bulk clips (cached), and a metadata table of just those."""
    from pyratok.pipelines.ingest.sample_data import write_sample_data

    corpus = work / "corpus"
    marker = corpus / f".bench-{clips}"
    if not marker.exists():
        shutil.rmtree(corpus, ignore_errors=True)
        started = time.perf_counter()
        write_sample_data(str(corpus), clips=clips)
        marker.write_text("")
        print(f"generated {clips} clips in {time.perf_counter() - started:.1f} s")
    source = corpus / "openvid" / "OpenVid-1M.csv"
    with open(source, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if r["video"].startswith("ov_bulk_")]
        columns = reader.fieldnames
    table = work / "bench-openvid.csv"
    with open(table, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return table, [corpus / "openvid" / "videos" / r["video"] for r in rows]


def floor(files: list[Path], work: Path, concurrency: int) -> dict:
    """ffprobe every file (as many in flight as ingest runs) + copy every file; best of two rounds."""
    from pyratok.pipelines.ingest.probe import probe

    dest = work / "floor-copy"
    rounds = []
    for _ in range(2):
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda f: probe(str(f), timeout_s=60), files))
        probe_s = time.perf_counter() - started
        started = time.perf_counter()
        for f in files:
            shutil.copyfile(f, dest / f.name)
        rounds.append({"probe_s": probe_s, "copy_s": time.perf_counter() - started})
    shutil.rmtree(dest)
    best = min(rounds, key=lambda r: r["probe_s"] + r["copy_s"])
    return {**best, "wall_s": best["probe_s"] + best["copy_s"], "concurrency": concurrency}



def pyratok_ingest(table: Path, videos: Path, work: Path, cores: int) -> dict:
    from pyratok.config import load
    from pyratok.core.ray_runtime import RayConfig, init_ray
    from pyratok.pipelines.ingest.config import InputSpec
    from pyratok.pipelines.ingest.job import run_ingest

    started = time.perf_counter()
    init_ray(RayConfig(num_cpus=cores, object_store_memory_mb=1024))
    ray_start_s = time.perf_counter() - started
    cfg = load(overrides=[
        f"work_dir={work / 'pyratok-work'}", "tracking.enabled=false",
        "ingest.shards.max_samples=64", "ingest.execution.probe_batch_size=16",
    ])  # fmt: skip
    # The same job without the integrity checks (index vs bytes, decode of both ends, content hash):
    # what they cost, measured beside the default.
    unchecked = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={
        "integrity": cfg.ingest.integrity.model_copy(update={"check_index": False, "decode_ends": False}),
        "dedup": cfg.ingest.dedup.model_copy(update={"content": False})})})  # fmt: skip
    spec = [InputSpec(source="openvid", metadata=str(table), videos=str(videos))]
    out = work / "pyratok-out"
    runs = {}
    for name, run_cfg in (("cold", cfg), ("warm", cfg), ("warm_unchecked", unchecked)):
        result = run_ingest(run_cfg, inputs=spec, output=str(out), overwrite=True)
        assert result.invariant_ok and result.rejected == 0, result.rejected_by_reason
        runs[name] = {"wall_s": result.wall_s, "timings_s": result.timings_s, "accepted": result.accepted,
                      "shards": len(result.shards), "bytes": result.bytes}  # fmt: skip
    return {"ray_start_s": ray_start_s, **runs}


def video2dataset_run(files: list[Path], work: Path, cores: int) -> dict | None:
    if not V2D_PYTHON.exists():
        print(f"video2dataset: skipped ({V2D_PYTHON} not found; see bench/README.md)")
        return None
    url_list = work / "v2d-urls.csv"
    with open(url_list, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "caption"])
        writer.writerows([str(f), f"clip {i}"] for i, f in enumerate(files))
    out = work / "v2d-out"
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(V2D_DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([str(V2D_PYTHON), fh.name, str(url_list), str(out), str(cores)],
                          capture_output=True, text=True, env=env, timeout=1800)  # fmt: skip
    os.unlink(fh.name)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("V2D_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        print(f"video2dataset: failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return None
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    done = sum(s.get("successes", 0) for s in stats)
    # Its shard workers' own time (from their stats), i.e. without its process pool start-up.
    worker_s = max((s["end_time"] for s in stats), default=0) - min((s["start_time"] for s in stats), default=0)
    return {**json.loads(line.split(" ", 1)[1]), "worker_s": worker_s, "successes": done,
            "count": sum(s.get("count", 0) for s in stats)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--work", type=Path, default=RESULTS / "ingest-work")
    parser.add_argument("--no-v2d", action="store_true")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("PYRATOK_LOG_LEVEL", "WARNING")
    from pyratok.core.logging import setup_logging

    setup_logging()
    args.work.mkdir(parents=True, exist_ok=True)
    table, files = make_corpus(args.work, args.clips)
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    n = len(files)
    print(f"corpus: {n} clips, {total_mb:.1f} MB, {args.cores} cores")

    from pyratok.pipelines.ingest.config import ExecutionConfig

    base = floor(files, args.work, args.cores * ExecutionConfig().probe_threads)
    ours = pyratok_ingest(table, files[0].parent, args.work, args.cores)
    peer = None if args.no_v2d else video2dataset_run(files, args.work, args.cores)

    def rates(wall: float) -> dict:
        return {"wall_s": round(wall, 3), "videos_per_s": round(n / wall, 2), "mb_per_s": round(total_mb / wall, 2),
                "videos_per_s_per_core": round(n / wall / args.cores, 2)}  # fmt: skip

    rows = {"floor (ffprobe + byte copy)": rates(base["wall_s"]),
            "pyratok ingest, cold workers": rates(ours["cold"]["wall_s"]),
            "pyratok ingest, warm workers": rates(ours["warm"]["wall_s"]),
            "pyratok ingest, warm, integrity checks off": rates(ours["warm_unchecked"]["wall_s"])}  # fmt: skip
    if peer:
        rows["video2dataset 1.3.0, whole call"] = rates(peer["wall_s"])
        rows["video2dataset 1.3.0, shard workers only"] = rates(peer["worker_s"])
    print(f"\n{'':44s} {'wall s':>8s} {'videos/s':>9s} {'MB/s':>8s} {'videos/s/core':>14s}")
    for name, r in rows.items():
        print(f"{name:44s} {r['wall_s']:8.2f} {r['videos_per_s']:9.2f} {r['mb_per_s']:8.2f} {r['videos_per_s_per_core']:14.2f}")
    ratios = {
        "ingest_cold_over_floor": round(ours["cold"]["wall_s"] / base["wall_s"], 2),
        "ingest_warm_over_floor": round(ours["warm"]["wall_s"] / base["wall_s"], 2),
        "ingest_unchecked_over_floor": round(ours["warm_unchecked"]["wall_s"] / base["wall_s"], 2),
        "integrity_checks_cost": round(ours["warm"]["wall_s"] / ours["warm_unchecked"]["wall_s"], 2),
    }
    if peer:
        ratios["v2d_call_over_ingest_cold"] = round(peer["wall_s"] / ours["cold"]["wall_s"], 2)
        ratios["v2d_workers_over_ingest_warm"] = round(peer["worker_s"] / ours["warm"]["wall_s"], 2)
    print("\nratios (time / time; target: ingest/floor <= 1.5, v2d/ingest > 1):")
    for key, value in ratios.items():
        print(f"  {key:28s} {value:.2f}")
    print(f"(Ray start-up {ours['ray_start_s']:.1f} s excluded; ingest stage times: {ours['warm']['timings_s']})")
    report = {"clips": n, "mb": round(total_mb, 2), "cores": args.cores, "floor": base, "pyratok": ours,
              "video2dataset": peer, "rows": rows, "ratios": ratios}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(report, indent=1))
    print(f"\nwrote {RESULTS / 'ingest.json'}")


if __name__ == "__main__":
    main()
