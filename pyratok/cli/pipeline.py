"""``pyratok pipeline run|rerun|status``: the whole workflow, one stage at a time, recorded."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Optional

import typer

from pyratok.cli.common import AddressOpt, ConfigOpt, SetOpt, load_cli_config, user_errors

app = typer.Typer(help="Run ingest -> caption -> train stages 1..3 as one workflow; rerun any stage alone.", no_args_is_help=True)


def _runner(config: str | None, sets: list[str] | None, address: str | None):
    from pyratok.workflow.runner import PipelineRunner
    from pyratok.workflow.stages import pipeline_stages

    extra = {"ray": {"address": address}} if address else None
    cfg = load_cli_config(config, sets, extra)
    return PipelineRunner(cfg, pipeline_stages(cfg))


def _execute(runner, **kwargs) -> None:
    from pyratok.core.ray_runtime import shutdown_ray
    from pyratok.workflow.runner import PipelineError

    try:
        runner.run(**kwargs)
    except PipelineError as exc:
        _print_status(runner)
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        typer.echo("fix the cause and run the same command again: completed stages are skipped, the failed one resumes.", err=True)
        raise typer.Exit(1) from None
    finally:
        shutdown_ray()
    _print_status(runner)


@app.command("run")
def run(config: ConfigOpt = None, sets: SetOpt = None, address: AddressOpt = None) -> None:
    """Run every stage whose config or inputs changed since it last completed; skip the rest."""
    with user_errors():
        runner = _runner(config, sets, address)
    _execute(runner)


@app.command("rerun")
def rerun(
    stage: Annotated[str, typer.Argument(help="sample-data | ingest | caption | train1 | train2 | train3")],
    downstream: Annotated[bool, typer.Option("--downstream", help="Also rerun every stage after it.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """Rerun STAGE (even if up to date) from its recorded inputs, without redoing the others."""
    with user_errors():
        runner = _runner(config, sets, address)
        if stage not in runner.by_name:
            raise ValueError(f"unknown stage {stage!r}; this pipeline has {', '.join(runner.by_name)}")
    targets = {stage, *(runner.downstream_of(stage) if downstream else ())}
    _execute(runner, force=targets, only=targets)


@app.command("status")
def status(config: ConfigOpt = None, sets: SetOpt = None) -> None:
    """Each stage with its state, timings, outputs and MLflow run."""
    with user_errors():
        runner = _runner(config, sets, None)
    _print_status(runner)


def _print_status(runner) -> None:
    from rich.console import Console
    from rich.table import Table

    from pyratok.core.tracking import configure, run_url

    table = Table(title=f"pipeline at {runner.root}", title_justify="left")
    for col in ("stage", "state", "finished", "took", "outputs", "MLflow run"):
        table.add_column(col, overflow="fold")
    tracking = runner.config.tracking.enabled
    if tracking:
        configure(runner.config.tracking, runner.config.work_dir)
    colours = {"completed": "green", "failed": "red", "stale": "yellow", "running": "cyan"}
    for view in runner.views():
        rec = view.record
        finished = dt.datetime.fromtimestamp(rec.ended_at).strftime("%Y-%m-%d %H:%M:%S") if rec.ended_at else "-"
        took = f"{rec.duration_s:.1f}s" if rec.duration_s is not None else "-"
        outputs = "\n".join(f"{k}: {v}" for k, v in rec.outputs.items()) or (rec.error or "-")
        link = run_url(rec.mlflow_run_id) if (tracking and rec.mlflow_run_id) else "-"
        colour = colours.get(view.state, "white")
        table.add_row(view.name, f"[{colour}]{view.state}[/{colour}]", finished, took, outputs, link)
    Console(stderr=False, width=160).print(table)
