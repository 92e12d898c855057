"""The full tiny pipeline's wall time per stage, and what the workflow layer adds to it.

    .venv/bin/python bench/pipeline.py [--steps 4] [--rounds 1]

Both sides run the embedded default (configs/local.yaml: sample corpus, tiny models, local Ray,
MLflow on sqlite) with the same overrides, in fresh work dirs, on one local Ray started before the
clock (both sides would otherwise pay its start-up once):

* direct: the stage APIs called one after another, exactly as the stage commands call them
  (`write_sample_data`, `run_ingest`, `run_caption`, `run_training` x3, each with its own
  MLflow run) - what a user typing `pyratok sample-data`, `pyratok ingest`, ... runs;
* pipeline: `PipelineRunner.run()` - the same stage bodies plus the workflow layer (state file
  reads/writes, config and input fingerprints, the MLflow parent run, lineage tags). Each stage
  body is timed inside the runner, so the layer's own time is measured exactly, apart from the
  run-to-run noise of the stage bodies;
* no-op rerun: `PipelineRunner.run()` again - every stage skipped, i.e. only the layer.

Target: workflow overhead per stage under 5 % of the stage or 2 s, whichever is larger.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import os
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
        print(f"  direct   {name:11s} {times[name]:7.2f} s", flush=True)
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
    """``PipelineRunner.run()`` with each stage body timed inside the runner."""
    from pyratok.config import load
    from pyratok.workflow.runner import PipelineRunner
    from pyratok.workflow.stages import pipeline_stages

    cfg = load("local", [*bench_overrides(work, steps), f"pipeline.root={work / 'pipeline'}"])
    bodies: dict[str, float] = {}

    def timed(spec):
        def run(ctx):
            start = time.perf_counter()
            try:
                return spec.run(ctx)
            finally:
                bodies[spec.name] = time.perf_counter() - start
                print(f"  pipeline {spec.name:11s} {bodies[spec.name]:7.2f} s (stage body)", flush=True)

        return dataclasses.replace(spec, run=run)

    runner = PipelineRunner(cfg, [timed(s) for s in pipeline_stages(cfg)])
    start = time.perf_counter()
    state = runner.run()
    total = time.perf_counter() - start
    recorded = {n: r.duration_s for n, r in state.stages.items()}
    start = time.perf_counter()
    runner.run()
    noop = time.perf_counter() - start
    return {"total_s": total, "bodies": bodies, "recorded": recorded, "noop_rerun_s": noop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps per stage")
    parser.add_argument("--rounds", type=int, default=1, help="run both sides this many times; the best counts")
    args = parser.parse_args()

    from pyratok.config import load
    from pyratok.core.logging import setup_logging
    from pyratok.core.ray_runtime import init_ray

    setup_logging("WARNING")
    RESULTS.mkdir(parents=True, exist_ok=True)
    init_ray(load("local").ray)
    direct_runs, pipeline_runs = [], []
    with tempfile.TemporaryDirectory(prefix="pyratok-bench-pipeline-") as tmp:
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}: pipeline", flush=True)
            pipeline_runs.append(pipeline(Path(tmp) / f"p{round_}", args.steps))
            print(f"round {round_ + 1}: direct", flush=True)
            direct_runs.append(direct(Path(tmp) / f"d{round_}", args.steps))

    stages = list(direct_runs[0])
    best_direct = {s: min(r[s] for r in direct_runs) for s in stages}
    best_pipe = min(pipeline_runs, key=lambda r: r["total_s"])
    rows = []
    for s in stages:
        body, recorded = best_pipe["bodies"][s], best_pipe["recorded"][s]
        layer = recorded - body  # state writes + fingerprints + lineage tags around this stage's body
        budget = max(0.05 * best_direct[s], 2.0)
        rows.append({"stage": s, "direct_s": best_direct[s], "pipeline_body_s": body, "pipeline_recorded_s": recorded,
                     "workflow_overhead_s": layer, "budget_s": budget, "within_target": layer <= budget})  # fmt: skip
    outside = best_pipe["total_s"] - sum(best_pipe["recorded"].values())  # parent run, state load, between stages
    report = {
        "args": vars(args), "host": platform.node(), "cpus": os.cpu_count(), "stages": rows,
        "pipeline_total_s": best_pipe["total_s"], "direct_total_s": sum(best_direct.values()),
        "workflow_outside_stages_s": outside, "noop_rerun_s": best_pipe["noop_rerun_s"],
        "rounds": {"direct": direct_runs, "pipeline": pipeline_runs},
    }  # fmt: skip
    print()
    print(f"{'stage':11s} {'direct s':>9s} {'pipeline s':>10s} {'overhead s':>10s} {'budget s':>8s}  ratio")
    for r in rows:
        print(f"{r['stage']:11s} {r['direct_s']:9.2f} {r['pipeline_recorded_s']:10.2f} {r['workflow_overhead_s']:10.2f}"
              f" {r['budget_s']:8.2f}  {r['pipeline_recorded_s'] / r['direct_s']:5.2f}x")  # fmt: skip
    print(f"{'total':11s} {report['direct_total_s']:9.2f} {report['pipeline_total_s']:10.2f}"
          f"   (+{outside:.2f} s around the stages)  ratio {report['pipeline_total_s'] / report['direct_total_s']:.2f}x")
    print(f"no-op rerun (every stage skipped): {report['noop_rerun_s']:.2f} s")
    out = RESULTS / "pipeline.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"report: {out}")


if __name__ == "__main__":
    main()
