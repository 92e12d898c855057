"""The full tiny pipeline's wall time per stage, and what the workflow layer adds to it.

    .venv/bin/python bench/pipeline.py [--steps 4] [--rounds 2]

Both sides run the embedded default (configs/local.yaml: sample corpus, tiny models, local Ray,
MLflow on sqlite) with the same overrides, each in a fresh process and work dir. Before the clock,
each process starts its local Ray and creates its MLflow store (costs any first command pays,
with or without the workflow layer). Then:

* direct: the stage APIs called one after another, exactly as the stage commands call them
  (`write_sample_data`, `run_ingest`, `run_caption`, `run_training` x3, each with its own MLflow
  run) - what a user typing `pyratok sample-data`, `pyratok ingest`, ... runs, wired by hand;
* pipeline: `PipelineRunner.run()` - the same stage bodies plus the workflow layer (state reads
  and writes, config and input fingerprints, the MLflow parent run, lineage tags). Each stage
  body and each whole stage step of the runner are timed, so the layer's own time per stage is
  measured exactly, apart from the run-to-run noise of the stage bodies;
* no-op rerun: `PipelineRunner.run()` again - every stage skipped, i.e. the layer alone.

The sides alternate (pipeline, direct, direct, pipeline, ...) and each stage's best time counts.
Target: workflow overhead per stage under 5 % of the stage or 2 s, whichever is larger.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def bench_overrides(work: Path, steps: int) -> list[str]:
    return [
        f"work_dir={work}", "tracking.experiment=bench-pipeline",
        *(f"train.stages.stage{k}.steps={steps}" for k in (1, 2, 3)),
        f"train.checkpoint.every_n_steps={steps}", f"train.tracking.sample_every_n_steps={steps}",
    ]  # fmt: skip


def direct(work: Path, steps: int) -> dict[str, float]:
    """The stage APIs back to back, with the pipeline's wiring done by hand."""
    from pyratok.config import load
    from pyratok.core.storage import Storage, join
    from pyratok.pipelines.caption.job import run_caption
    from pyratok.pipelines.ingest.config import InputSpec
    from pyratok.pipelines.ingest.job import run_ingest
    from pyratok.pipelines.ingest.sample_data import INPUTS_FILE, load_inputs_file, write_sample_data
    from pyratok.pipelines.train.runner import run_training

    root = str(work / "direct")
    cfg = load("local", [*bench_overrides(work, steps), f"train.checkpoint.storage_path={join(root, 'checkpoints')}"])
    storage = Storage(cfg.storage)
    times: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - start
        print(f"  direct   {name:11s} {times[name]:7.2f} s", file=sys.stderr, flush=True)
        return out

    raw = join(root, "raw")
    timed("sample-data", lambda: write_sample_data(raw, storage=storage))
    inputs = [InputSpec(**i) for i in load_inputs_file(join(raw, INPUTS_FILE), storage)]
    dataset = join(root, "dataset")
    timed("ingest", lambda: run_ingest(cfg, inputs=inputs, output=dataset))
    version = timed("caption", lambda: run_caption(cfg, shards_root=dataset)).version
    previous = None
    for k in (1, 2, 3):
        result = timed(f"train{k}", lambda: run_training(cfg, stage=k, data=dataset, caption_version=version, init_from=previous))
        previous = result.checkpoint_uri
    return times


def pipeline(work: Path, steps: int) -> dict:
    """``PipelineRunner.run()``, timing each stage body and each whole stage step of the runner."""
    from pyratok.config import load
    from pyratok.workflow.runner import PipelineRunner
    from pyratok.workflow.stages import pipeline_stages

    cfg = load("local", [*bench_overrides(work, steps), f"pipeline.root={work / 'pipeline'}"])
    bodies: dict[str, float] = {}
    steps_s: dict[str, float] = {}

    def timed(spec):
        def run(ctx):
            start = time.perf_counter()
            try:
                return spec.run(ctx)
            finally:
                bodies[spec.name] = time.perf_counter() - start
                print(f"  pipeline {spec.name:11s} {bodies[spec.name]:7.2f} s (stage body)", file=sys.stderr, flush=True)

        return dataclasses.replace(spec, run=run)

    class TimedRunner(PipelineRunner):
        def _run_stage(self, spec, state, **kwargs):
            start = time.perf_counter()
            try:
                return super()._run_stage(spec, state, **kwargs)
            finally:
                steps_s[spec.name] = time.perf_counter() - start

    runner = TimedRunner(cfg, [timed(s) for s in pipeline_stages(cfg)])
    start = time.perf_counter()
    runner.run()
    total = time.perf_counter() - start
    first = dict(steps_s)  # the no-op rerun below steps through every stage again
    start = time.perf_counter()
    runner.run()
    noop = time.perf_counter() - start
    return {"total_s": total, "bodies": bodies, "stage_steps": first, "noop_rerun_s": noop}


def side(name: str, work: Path, steps: int) -> dict:
    """One side in this (fresh) process: Ray and the MLflow store are set up before the clock."""
    from pyratok.config import load
    from pyratok.core.logging import setup_logging
    from pyratok.core.ray_runtime import init_ray
    from pyratok.core.tracking import configure

    setup_logging("WARNING")
    cfg = load("local", bench_overrides(work, steps))
    init_ray(cfg.ray)
    configure(cfg.tracking, cfg.work_dir)
    if name == "direct":
        times = direct(work, steps)
        return {"total_s": sum(times.values()), "bodies": times}
    return pipeline(work, steps)


def run_side(name: str, work: Path, steps: int) -> dict:
    work.mkdir(parents=True)
    argv = [sys.executable, __file__, "--side", name, "--work", str(work), "--steps", str(steps)]
    done = subprocess.run(argv, check=False)  # its Ray/progress output streams through
    if done.returncode != 0:
        raise RuntimeError(f"{name} side failed (exit {done.returncode})")
    return json.loads((work / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps per stage")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side (alternating); the best counts")
    parser.add_argument("--side", choices=["direct", "pipeline"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        result = side(args.side, Path(args.work), args.steps)
        (Path(args.work) / "result.json").write_text(json.dumps(result))
        return

    RESULTS.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"direct": [], "pipeline": []}
    with tempfile.TemporaryDirectory(prefix="pyratok-bench-pipeline-") as tmp:
        for round_ in range(args.rounds):
            order = ("pipeline", "direct") if round_ % 2 == 0 else ("direct", "pipeline")
            for name in order:
                print(f"round {round_ + 1}: {name}", flush=True)
                runs[name].append(run_side(name, Path(tmp) / f"{name}{round_}", args.steps))

    stages = list(runs["direct"][0]["bodies"])
    best = {n: {s: min(r["bodies"][s] for r in runs[n]) for s in stages} for n in runs}
    rows = []
    for s in stages:
        layer = min(r["stage_steps"][s] - r["bodies"][s] for r in runs["pipeline"])
        budget = max(0.05 * best["direct"][s], 2.0)
        rows.append({"stage": s, "direct_s": best["direct"][s], "pipeline_body_s": best["pipeline"][s],
                     "workflow_overhead_s": layer, "budget_s": budget, "within_target": layer <= budget})  # fmt: skip
    outside = min(r["total_s"] - sum(r["stage_steps"].values()) for r in runs["pipeline"])
    totals = {n: min(r["total_s"] for r in runs[n]) for n in runs}
    noop = min(r["noop_rerun_s"] for r in runs["pipeline"])
    report = {
        "args": vars(args), "host": platform.node(), "cpus": os.cpu_count(), "stages": rows,
        "direct_total_s": totals["direct"], "pipeline_total_s": totals["pipeline"],
        "workflow_overhead_total_s": sum(r["workflow_overhead_s"] for r in rows) + outside,
        "workflow_outside_stages_s": outside, "noop_rerun_s": noop, "runs": runs,
    }  # fmt: skip
    print()
    print(f"{'stage':11s} {'direct s':>9s} {'pipeline body s':>15s} {'layer s':>8s} {'budget s':>8s}")
    for r in rows:
        print(f"{r['stage']:11s} {r['direct_s']:9.2f} {r['pipeline_body_s']:15.2f} {r['workflow_overhead_s']:8.3f} {r['budget_s']:8.2f}")
    print(f"layer outside the stages (parent run, state load): {outside:.3f} s")
    print(f"workflow layer in all: {report['workflow_overhead_total_s']:.2f} s = "
          f"{100 * report['workflow_overhead_total_s'] / totals['direct']:.2f} % of the direct total")  # fmt: skip
    print(f"totals (best): direct {totals['direct']:.2f} s, pipeline {totals['pipeline']:.2f} s "
          f"({totals['pipeline'] / totals['direct']:.2f}x; the difference is mostly run-to-run noise of the stage bodies)")
    print(f"no-op rerun (every stage skipped): {noop:.2f} s")
    out = RESULTS / "pipeline.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"report: {out}")


if __name__ == "__main__":
    main()
