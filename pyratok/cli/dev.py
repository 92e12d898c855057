"""``pyratok dev up|down|status|env``: Ray head + MLflow server + S3 server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="A local dev stack (Ray head, MLflow server, S3 server on 127.0.0.1) for trying the cluster path on one machine.", no_args_is_help=True)

DirOpt = Annotated[Path, typer.Option("--dir", help="Where the stack keeps its state, logs, databases and Ray token.")]
DEFAULT_DIR = Path("pyratok-work/devstack")


@app.command("up")
def up(
    dir: DirOpt = DEFAULT_DIR,
    num_cpus: Annotated[Optional[int], typer.Option("--num-cpus", help="CPUs the Ray head offers (default: all).")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Start Ray without token authentication.")] = False,
) -> None:
    """Start the stack (idempotent) and print the exports that point pyratok at it."""
    from pyratok.core.logging import setup_logging
    from pyratok.workflow import devstack

    setup_logging()
    services = devstack.up(dir, num_cpus=num_cpus, auth=not no_auth)
    for s in services:
        typer.echo(f"{s.name:7s} {s.url}  (pid {s.pid}, log {s.log})", err=True)
    typer.echo(f"# eval \"$(pyratok dev env --dir {dir})\"  then e.g. pyratok submit ingest -- ...", err=True)
    typer.echo(devstack.render_exports(services))


@app.command("env")
def env(dir: DirOpt = DEFAULT_DIR) -> None:
    """Print `export` lines for the running stack (use: eval "$(pyratok dev env)")."""
    from pyratok.workflow import devstack

    services = [s for s in devstack.load(dir) if s.alive()]
    if not services:
        typer.secho(f"no dev stack running under {dir}; start it with `pyratok dev up`", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(devstack.render_exports(services))


@app.command("status")
def status(dir: DirOpt = DEFAULT_DIR) -> None:
    """Show each service of the stack and whether it is alive."""
    from pyratok.workflow import devstack

    services = devstack.load(dir)
    if not services:
        typer.echo(f"no dev stack recorded under {dir}")
    for s in services:
        typer.echo(f"{s.name:7s} {'up  ' if s.alive() else 'DOWN'} {s.url}  (pid {s.pid})")


@app.command("down")
def down(dir: DirOpt = DEFAULT_DIR) -> None:
    """Stop exactly the services `dev up` started (never other Ray instances)."""
    from pyratok.workflow import devstack

    stopped = devstack.down(dir)
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")
