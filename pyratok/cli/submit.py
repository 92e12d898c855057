"""``pyratok submit`` and ``pyratok jobs``: run stages on a Ray cluster through the Jobs API."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pyratok.cli.common import ConfigOpt, SetOpt, load_cli_config, user_errors

JobAddressOpt = Annotated[
    Optional[str],
    typer.Option("--address", help="Ray Jobs API (dashboard) URL, http://HEAD:8265. Default: $RAY_API_SERVER_ADDRESS."),
]


def submit(
    ctx: typer.Context,
    stage: Annotated[str, typer.Argument(help="ingest | caption | train | pipeline | sample-data | model | tokenize | reconstruct")],
    address: JobAddressOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    env: Annotated[Optional[list[str]], typer.Option("--env", help="Forward this environment variable (by name) to the job; repeatable.")] = None,
    no_working_dir: Annotated[bool, typer.Option("--no-working-dir", help="Run the cluster image's installed pyratok instead of shipping this source.")] = False,
    pip: Annotated[Optional[list[str]], typer.Option("--pip", help="Extra pip requirement for the job's runtime_env; repeatable.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream the job's logs and exit with its status.")] = False,
) -> None:
    """Submit STAGE to a Ray cluster; arguments after `--` go to the stage (e.g. `pyratok submit ingest -- --source openvid ...`)."""
    from pyratok.workflow import submit as jobs

    with user_errors():
        cfg = load_cli_config(config, sets)
        job_id = jobs.submit_stage(
            stage, list(ctx.args), config=cfg, address=address, env_names=env or (),
            use_working_dir=not no_working_dir, pip=pip,
        )  # fmt: skip
    typer.echo(job_id)
    if follow:
        jobs.follow_logs(job_id, address, write=typer.echo)
        final = jobs.wait(job_id, address)
        typer.echo(f"job {job_id}: {final}", err=True)
        raise typer.Exit(0 if final == "SUCCEEDED" else 1)


# Everything after `--` passes through to the submitted stage.
submit.context_settings = {"allow_extra_args": True, "ignore_unknown_options": True}

jobs_app = typer.Typer(help="Follow jobs submitted with `pyratok submit`.", no_args_is_help=True)


@jobs_app.command("status")
def status(job_id: str, address: JobAddressOpt = None) -> None:
    """Print the job's status (and its message when it has one)."""
    from pyratok.workflow.submit import client

    with user_errors():
        info = client(address).get_job_info(job_id)
    typer.echo(f"{job_id}: {info.status.value}" + (f" — {info.message}" if info.message else ""))


@jobs_app.command("logs")
def logs(
    job_id: str,
    address: JobAddressOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends.")] = False,
) -> None:
    """Print the job's logs."""
    from pyratok.workflow.submit import client, follow_logs

    with user_errors():
        if follow:
            follow_logs(job_id, address, write=typer.echo)
        else:
            typer.echo(client(address).get_job_logs(job_id))


@jobs_app.command("stop")
def stop(job_id: str, address: JobAddressOpt = None) -> None:
    """Ask the cluster to stop the job."""
    from pyratok.workflow.submit import client

    with user_errors():
        stopped = client(address).stop_job(job_id)
    typer.echo(f"{job_id}: {'stop requested' if stopped else 'already finished'}")


@jobs_app.command("list")
def list_jobs(address: JobAddressOpt = None) -> None:
    """List the cluster's jobs, newest first."""
    from pyratok.workflow.submit import client

    with user_errors():
        jobs = sorted(client(address).list_jobs(), key=lambda j: j.start_time or 0, reverse=True)
    for job in jobs:
        typer.echo(f"{job.submission_id}  {job.status.value:10s}  {job.entrypoint}")
