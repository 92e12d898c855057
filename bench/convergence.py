"""Convergence of the tiny model: eval scores on the val split at a few stage-1 checkpoints, against the
untrained model and the VAE ceiling, in one run on the same data.

    .venv/bin/python bench/convergence.py [--steps 100] [--every 25] [--work DIR] [-s key=value ...]

The real parts, as the embedded default runs them: the pipeline's ``sample-data``, ``ingest``,
``caption`` and ``vae-warmup`` stages (cached in ``--work``; rerun only when their config changes),
then ``run_training`` (Ray Train + DeepSpeed, 2 CPU workers, the local preset's stage 1) for
``--steps`` steps with a checkpoint every ``--every``, then ``run_eval`` (the Ray Data eval job) on
every checkpoint, and on the model stage 1 starts from (the warmed VAE, LaPQ/fusion at init).

Reported per point: val PSNR / SSIM, codebook utilisation (all levels) and perplexity, and the gains
against two baselines: ``untrained`` (the preset's model before any training: a random VAE) and
``start`` (what stage 1 starts from). ``ceiling``: the backbone VAE's own continuous reconstruction.
Target (the local preset, 100 steps): val PSNR >= untrained + 6 dB. Writes ``bench/results/convergence.json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))


def prepare(cfg) -> tuple[str, str]:
    """The dataset and the warmed-up VAE, by the pipeline's own stages (skipped when up to date)."""
    from pyratok.workflow.runner import PipelineRunner
    from pyratok.workflow.stages import default_stages

    state = PipelineRunner(cfg, default_stages()).run(only={"sample-data", "ingest", "caption", "vae-warmup"})
    return state.stages["ingest"].outputs["dataset"], state.stages["vae-warmup"].outputs["vae"]


def score(cfg, model: str, data: str) -> dict:
    from pyratok.pipelines.eval.job import run_eval

    m = run_eval(cfg, model=model, data=data).metrics
    keys = ("psnr", "ssim", "vae_psnr", "untrained_psnr", "codebook/all/utilisation", "codebook/all/perplexity")
    return {k: float(m[k]) for k in keys if k in m}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--work", default=str(RESULTS / "convergence-work"))
    parser.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the stage-1 training config (e.g. model.backbone.decoder=lora)")
    args = parser.parse_args()

    from pyratok.config import load
    from pyratok.model import PyraTok
    from pyratok.pipelines.train.runner import run_training
    from pyratok.pipelines.train.stages import stage_config

    started = time.perf_counter()
    cfg = load("local", [f"work_dir={args.work}", "tracking.enabled=false"])
    data, vae = prepare(cfg)
    train_cfg = stage_config(cfg, 1, [f"model.backbone.path={vae}", f"train.stages.stage1.steps={args.steps}",
                                      f"train.checkpoint.every_n_steps={args.every}",
                                      f"train.checkpoint.num_to_keep={args.steps // args.every + 2}", *args.set])
    start_dir = os.path.join(args.work, "bench-start-model")  # what stage 1 starts from, saved as a tokenizer
    if not os.path.isdir(start_dir):
        import torch

        torch.manual_seed(train_cfg.train.seed)
        PyraTok.from_config(train_cfg.model).save_pretrained(start_dir)
    result = run_training(train_cfg, stage=1, data=data, from_scratch=True, run_name="bench-convergence")
    checkpoints = sorted(glob.glob(os.path.join(os.path.dirname(result.checkpoint_uri), "checkpoint_step*", "model")))

    points = [{"step": 0, **score(cfg, start_dir, data)}]
    for model_dir in checkpoints:
        step = int(os.path.basename(os.path.dirname(model_dir)).removeprefix("checkpoint_step"))
        points.append({"step": step, **score(cfg, model_dir, data)})
        print(f"step {step}: val PSNR {points[-1]['psnr']:.2f} dB", flush=True)
    untrained, begin = points[0]["untrained_psnr"], points[0]["psnr"]
    print(f"\n{'step':>5} {'PSNR':>7} {'SSIM':>7} {'vs untrained':>13} {'vs start':>9} {'to ceiling':>11} "
          f"{'used %':>8} {'perplexity':>11}")
    for p in points:
        p["gain_vs_untrained_db"] = p["psnr"] - untrained
        p["gain_vs_start_db"] = p["psnr"] - begin
        p["gap_to_ceiling_db"] = p["vae_psnr"] - p["psnr"]
        print(f"{p['step']:>5} {p['psnr']:>7.2f} {p['ssim']:>7.4f} {p['gain_vs_untrained_db']:>+13.2f} "
              f"{p['gain_vs_start_db']:>+9.2f} {p['gap_to_ceiling_db']:>11.2f} "
              f"{100 * p.get('codebook/all/utilisation', float('nan')):>8.3f} {p.get('codebook/all/perplexity', float('nan')):>11.1f}")
    final = points[-1]
    print(f"\nuntrained {untrained:.2f} dB, start of stage 1 {begin:.2f} dB, VAE ceiling {final['vae_psnr']:.2f} dB")
    print(f"target: final val PSNR >= untrained + 6 dB: {final['gain_vs_untrained_db']:+.2f} dB "
          f"({'met' if final['gain_vs_untrained_db'] >= 6 else 'NOT met'})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"steps": args.steps, "every": args.every, "points": points, "wall_s": time.perf_counter() - started}
    (RESULTS / "convergence.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
