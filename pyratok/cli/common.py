"""Options and error handling shared by every subcommand.

Subcommand modules import heavy libraries (torch, ray, mlflow) inside the
command body so ``pyratok --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Annotated, Callable, Iterator, Optional

import typer

ConfigOpt = Annotated[
    Optional[str],
    typer.Option("--config", "-c", help="YAML preset (path or name in configs/, e.g. local, cluster, stage2). Default: local."),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config value: key.path=value (repeatable), e.g. -s ingest.filters.min_short_side=480."),
]
AddressOpt = Annotated[
    Optional[str],
    typer.Option("--address", help="Ray cluster address (ray://host:10001, host:6379, auto). Default: $RAY_ADDRESS, else a local Ray."),
]


def load_cli_config(config: str | None, sets: list[str] | None, extra: dict | None = None):
    """The resolved root config for a command, with logging set up."""
    from pyratok.config import DEFAULT_PRESET, load
    from pyratok.core.logging import setup_logging

    setup_logging()
    return load(config or DEFAULT_PRESET, sets or (), extra)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn configuration/storage/input errors into one red line and exit code 2 (no traceback)."""
    from pyratok.core.config import ConfigError
    from pyratok.core.storage import StorageError

    try:
        yield
    except (ConfigError, StorageError, FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None


def handles_user_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with user_errors():
            return fn(*args, **kwargs)

    return wrapper


def echo(message: str) -> None:
    typer.echo(message, file=sys.stdout)
