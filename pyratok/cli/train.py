"""``pyratok train``: one PyraTok training stage on Ray Train (DeepSpeed or DDP), tracked in MLflow."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pyratok.cli.common import AddressOpt, ConfigOpt, SetOpt, echo, user_errors


def train(
    stage: Annotated[int, typer.Option("--stage", min=1, max=3, help="Training stage: 1 pretrain, 2 text alignment, 3 full-scale fine-tune.")],
    data: Annotated[str, typer.Option("--data", help="Dataset root (with shards/) or a folder of .tar shards; local path or s3:// URI.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    caption_version: Annotated[Optional[str], typer.Option("--caption-version", help="Recaption set to train on (version id or name); default: the shards' source captions.")] = None,
    init_from: Annotated[Optional[str], typer.Option("--init-from", help="Start from an exported model, a training checkpoint, the MLflow run id of the previous stage, or 'latest' (its newest finished run in the experiment). Required for stages 2 and 3 unless --from-scratch.")] = None,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Stage 2/3 only: start from the pretrained VAE alone instead of the previous stage's model.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the last run of this stage from its latest checkpoint.")] = False,
    strategy: Annotated[Optional[str], typer.Option("--strategy", help="deepspeed or ddp (default: train.strategy.name).")] = None,
    run_name: Annotated[Optional[str], typer.Option("--run-name", help="Name of the Ray Train run (default: stage<N>-<time>); with --resume, the run to continue.")] = None,
    address: AddressOpt = None,
) -> None:
    """Train one PyraTok stage; prints the checkpoint location and the MLflow run id at the end."""
    with user_errors():
        if strategy not in (None, "deepspeed", "ddp"):
            raise ValueError(f"--strategy must be deepspeed or ddp, got {strategy!r}")
        from pyratok.cli.common import load_cli_config
        from pyratok.pipelines.train.runner import run_training

        cfg = load_cli_config(config, sets)
        result = run_training(
            cfg,
            stage=stage,
            data=data,
            caption_version=caption_version,
            init_from=init_from,
            from_scratch=from_scratch,
            resume=resume,
            strategy=strategy,
            address=address,
            run_name=run_name,
            overrides=sets or (),
        )
    echo(f"stage {result.stage}: {result.steps} steps ({result.run_name})")
    if result.restarts:
        echo(f"restarted from step(s): {', '.join(map(str, result.restarts))}")
    if result.skipped:
        echo("skipped samples: " + ", ".join(f"{k}={v}" for k, v in sorted(result.skipped.items())))
    echo(f"checkpoint: {result.checkpoint_uri}")
    echo(f"model: {result.model_uri}")
    if result.registered:
        name = result.registered.removeprefix("models:/").split("/")[0]
        echo(f"registered: {result.registered} (alias models:/{name}@stage{result.stage})")
    if result.mlflow_run_id:
        from pyratok.core.tracking import run_url

        echo(f"mlflow run: {result.mlflow_run_id} ({run_url(result.mlflow_run_id)})")
