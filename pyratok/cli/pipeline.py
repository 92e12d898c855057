"""``pyratok pipeline run|rerun|status``: the whole workflow, one stage at a time, recorded.

One driver at a time per pipeline root: ``run``/``rerun`` hold ``<root>/pipeline/lock.json``
while they run, and a second one exits at once (code 3) naming the holder. ``--take-over``
(alias ``--force``) takes the lock of a driver whose heartbeat is older than
``pipeline.lock.stale_after_s``; it is not a way to force stages to rerun (that is ``rerun``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
from typing import Annotated, Iterator, Optional

import typer

from pyratok.cli.common import AddressOpt, ConfigOpt, SetOpt, load_cli_config, user_errors

TakeOverOpt = Annotated[
    bool,
    typer.Option(
        "--take-over", "--force",
        help="Take over the root's driver lock if its holder's heartbeat is older than pipeline.lock.stale_after_s "
             "(a driver that died on another machine). A live driver's lock is never taken.",
    ),
]  # fmt: skip
ROOT_IN_USE_EXIT = 3

app = typer.Typer(help="Run ingest -> caption -> train stages 1..3 as one workflow; rerun any stage alone.", no_args_is_help=True)


def _runner(config: str | None, sets: list[str] | None, address: str | None):
    from pyratok.workflow.runner import PipelineRunner
    from pyratok.workflow.stages import pipeline_stages

    extra = {"ray": {"address": address}} if address else None
    cfg = load_cli_config(config, sets, extra)
    return PipelineRunner(cfg, pipeline_stages(cfg))


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a stopped job, a pod being evicted) ends the driver like Ctrl-C does, so the
    running stage is recorded ``failed`` and the driver lock released; SIGKILL cannot be
    caught, and shows as ``interrupted`` on the next ``status``."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt("terminated by SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _execute(runner, **kwargs) -> None:
    from pyratok.core.ray_runtime import shutdown_ray
    from pyratok.core.storage import StorageError
    from pyratok.workflow.runner import PipelineError, RootInUseError

    try:
        with _sigterm_interrupts():
            runner.run(**kwargs)
    except RootInUseError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(ROOT_IN_USE_EXIT) from None
    except StorageError as exc:  # the state or the lock could not be read or written
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except PipelineError as exc:
        _print_status(runner)
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        typer.echo("fix the cause and run the same command again: completed stages are skipped, the failed one resumes.", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as exc:
        _print_status(runner)
        message = f"interrupted ({exc or 'Ctrl-C'}): the running stage is recorded failed; run again to resume it."
        typer.secho(message, fg=typer.colors.RED, err=True)
        raise typer.Exit(143 if "SIGTERM" in str(exc) else 130) from None
    finally:
        shutdown_ray()
    _print_status(runner)
    for line in next_steps(runner):
        typer.echo(line)


TRAIN_STAGES = ("train3", "train2", "train1")


def next_steps(runner) -> list[str]:
    """What a user does with a finished pipeline: the tokenizer, the MLflow UI, one command to try it."""
    import glob
    import os

    from pyratok.core.storage import is_s3
    from pyratok.core.secrets import strip_url_credentials
    from pyratok.core.tracking import resolve_tracking_uri

    records = runner.load().stages
    done = [name for name in TRAIN_STAGES if name in records and records[name].status == "completed"]
    lines = []
    outputs = records[done[0]].outputs if done else {}
    files = outputs.get("model")
    cfg = runner.config
    model = files
    if outputs.get("registered") and cfg.tracking.registered_model:  # the alias stays put across reruns
        model = f"models:/{cfg.tracking.registered_model}@stage{done[0].removeprefix('train')}"
    if model:
        lines.append(f"tokenizer ({done[0]}): {model}" + (f"  (files: {files})" if model != files else ""))
    env = ""
    if cfg.tracking.enabled:
        uri = resolve_tracking_uri(cfg.tracking, cfg.work_dir)
        if uri.startswith(("http://", "https://")):
            lines.append(f"MLflow: {strip_url_credentials(uri)}  (experiment {cfg.tracking.experiment})")
        else:
            lines.append(f"browse the runs: mlflow ui --backend-store-uri {uri}")
        if model != files:  # where models:/ resolves (a user's shell rarely has it set; mlflow sets it in-process)
            env = f"MLFLOW_TRACKING_URI={strip_url_credentials(uri)} "
    if model:
        corpus = records.get("sample-data").outputs.get("corpus") if "sample-data" in records else None
        videos = sorted(glob.glob(os.path.join(corpus, "**", "*.mp4"), recursive=True)) if corpus and not is_s3(corpus) else []
        video = videos[0] if videos else "<your video.mp4>"
        lines.append(f"try it: {env}pyratok reconstruct --model {model} --video {video} --max-frames 17 --out reconstruction.mp4")
    return lines


@app.command("run")
def run(config: ConfigOpt = None, sets: SetOpt = None, address: AddressOpt = None, take_over: TakeOverOpt = False) -> None:
    """Run every stage whose config or inputs changed since it last completed; skip the rest."""
    with user_errors():
        runner = _runner(config, sets, address)
    _execute(runner, take_over=take_over)


@app.command("rerun")
def rerun(
    stage: Annotated[str, typer.Argument(help="sample-data | ingest | caption | train1 | train2 | train3")],
    downstream: Annotated[bool, typer.Option("--downstream", help="Also rerun every stage after it.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    address: AddressOpt = None,
    take_over: TakeOverOpt = False,
) -> None:
    """Rerun STAGE (even if up to date) from its recorded inputs, without redoing the others."""
    with user_errors():
        runner = _runner(config, sets, address)
        if stage not in runner.by_name:
            raise ValueError(f"unknown stage {stage!r}; this pipeline has {', '.join(runner.by_name)}")
    targets = {stage, *(runner.downstream_of(stage) if downstream else ())}
    _execute(runner, force=targets, only=targets, take_over=take_over)


@app.command("status")
def status(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON (for scripts), not a table.")] = False,
) -> None:
    """Each stage with its state, timings, outputs and MLflow run."""
    with user_errors():
        runner = _runner(config, sets, None)
    if as_json:
        import json

        typer.echo(json.dumps(status_document(runner), indent=2, sort_keys=True))
        return
    _print_status(runner)


def status_document(runner) -> dict:
    """What ``pipeline status`` shows, as data: the root, each stage in order, the lock holder."""
    from pyratok.workflow.lock import holder_is_live

    stages = []
    for view in runner.views():
        rec = view.record
        stages.append({
            "stage": view.name, "state": view.state, "recorded_status": rec.status, "attempts": rec.attempts,
            "started_at": rec.started_at, "ended_at": rec.ended_at, "duration_s": rec.duration_s,
            "outputs": dict(rec.outputs), "error": rec.error, "mlflow_run_id": rec.mlflow_run_id,
            "fingerprint": rec.fingerprint, "current_fingerprint": view.current_fingerprint,
        })  # fmt: skip
    holder = runner.lock_holder()
    lock = None
    if holder is not None:
        gone = not holder_is_live(holder, runner.config.pipeline.lock)
        lock = {"host": holder.host, "pid": holder.pid, "user": holder.user, "started_at": holder.started_at,
                "heartbeat_at": holder.heartbeat_at, "stale": bool(gone)}  # fmt: skip
    return {"root": runner.root, "stages": stages, "lock": lock}


STATUS_WIDTH = 100
OUTPUTS_WIDTH = 36
"""What is left of 100 columns after stage, state, finished, took and the run id (and the borders)."""


def wrap_path(text: str, width: int) -> list[str]:
    """Break a long value into lines of at most ``width`` at ``/``, ``-`` or ``_`` (never mid-name
    unless one name alone is longer than ``width``)."""
    import re

    lines, line = [], ""
    for piece in re.findall(r"[^/_-]*[/_-]|[^/_-]+$", text):
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        while len(piece) > width:
            lines.append(piece[:width])
            piece = piece[width:]
        line += piece
    return [*lines, line] if line else lines


def _shown(value: str, root: str) -> str:
    """An output as the table shows it: relative to the pipeline root when under it (``--json``: in full)."""
    prefix = root.rstrip("/") + "/"
    return value[len(prefix):] if value.startswith(prefix) else value


def _print_status(runner) -> None:
    from rich.console import Console
    from rich.table import Table

    from pyratok.core.secrets import strip_url_credentials
    from pyratok.core.tracking import resolve_tracking_uri
    from pyratok.workflow.lock import holder_is_live

    table = Table(title=f"pipeline at {runner.root}", title_justify="left")
    for col, width in (("stage", 11), ("state", 11), ("finished", 8), ("took", 6)):
        table.add_column(col, no_wrap=True, min_width=width)
    table.add_column("outputs (under the root)", no_wrap=True, width=OUTPUTS_WIDTH)
    table.add_column("run", no_wrap=True, min_width=8)
    tracking = runner.config.tracking.enabled
    colours = {"completed": "green", "failed": "red", "stale": "yellow", "running": "cyan", "interrupted": "magenta"}
    for view in runner.views():
        rec = view.record
        finished = dt.datetime.fromtimestamp(rec.ended_at).strftime("%H:%M:%S") if rec.ended_at else "-"
        took = "-" if rec.duration_s is None else f"{rec.duration_s:.1f}s" if rec.duration_s < 100 else f"{rec.duration_s:.0f}s"
        items = [f"{k}: {_shown(str(v), runner.root)}" for k, v in rec.outputs.items()]
        if view.state == "failed" and rec.error:
            items = [rec.error, *(f"(earlier) {item}" for item in items)]
        elif view.state == "interrupted":
            items = ["its driver is gone (killed?): run again to resume"]
        elif not items:
            items = [rec.error or "-"]
        outputs = "\n".join(line for item in items for line in wrap_path(item, OUTPUTS_WIDTH))
        run_id = rec.mlflow_run_id[:8] if (tracking and rec.mlflow_run_id) else "-"
        colour = colours.get(view.state, "white")
        table.add_row(view.name, f"[{colour}]{view.state}[/{colour}]", finished, took, outputs, run_id)
    notes = []
    if tracking:
        notes.append(f"MLflow: {strip_url_credentials(resolve_tracking_uri(runner.config.tracking, runner.config.work_dir))}"
                     " (run ids shortened, times of day local; --json has them in full)")
    holder = runner.lock_holder()
    if holder is not None:
        gone = not holder_is_live(holder, runner.config.pipeline.lock)
        notes.append(f"{'stale lock of a gone driver' if gone else 'in use by'}: {holder.describe()}")
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    Console(stderr=False, width=STATUS_WIDTH, soft_wrap=False).print(table)
