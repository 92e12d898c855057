"""``pyratok``: one CLI for every stage of the pipeline."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="pyratok",
    help="Ingest video datasets into WebDataset shards, recaption them, and train the PyraTok tokenizer on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def version_text() -> str:
    """``pyratok <version>`` (+ the git commit of a source checkout), then the versions that decide results."""
    from pyratok.core.provenance import git_commit, installed_version

    line = f"pyratok {installed_version('pyratok')}"
    if (found := git_commit()) is not None:
        line += f" (git {found[0][:7]}{', modified' if found[1] else ''})"
    libs = ("torch", "ray", "deepspeed", "diffusers", "transformers", "peft", "webdataset", "mlflow")
    return "\n".join([line, *(f"  {lib} {installed_version(lib)}" for lib in libs)])


def _print_version(ctx: typer.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version of pyratok and of the libraries it runs on, then exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Debug logging, and the libraries' own output (Ray Data plans, DeepSpeed, "
                                      "progress bars of weight loading). Same as PYRATOK_LOG_LEVEL=DEBUG."),
) -> None:
    """Ingest video datasets into WebDataset shards, recaption them, and train the PyraTok tokenizer on Ray."""
    if verbose:
        import os

        from pyratok.core.logging import LEVEL_ENV

        os.environ[LEVEL_ENV] = "DEBUG"  # an env var, so Ray workers and submitted jobs see it too


@app.command("config")
def show_config(
    config: str = typer.Option(None, "--config", "-c", help="Preset (path or name in configs/)."),
    sets: list[str] = typer.Option(None, "--set", "-s", help="Override key.path=value (repeatable)."),
) -> None:
    """Print the resolved config (preset + inheritance + overrides) as YAML."""
    from pyratok.cli.common import load_cli_config, user_errors
    from pyratok.core.config import to_yaml

    with user_errors():
        typer.echo(to_yaml(load_cli_config(config, sets)))


# Each stage's commands live in their own module (cheap to import: heavy libraries
# load inside the commands). "module:attr" -> a command function or a Typer group;
# a function may carry click `context_settings` as an attribute.
SUBCOMMANDS: list[tuple[str, str]] = [  # in the order a user meets them
    ("pipeline", "pyratok.cli.pipeline:app"),
    ("sample-data", "pyratok.cli.sample_data:sample_data"),
    ("ingest", "pyratok.cli.ingest:ingest"),
    ("caption", "pyratok.cli.caption:app"),
    ("train", "pyratok.cli.train:train"),
    ("eval", "pyratok.cli.eval:eval_cmd"),
    ("model", "pyratok.cli.model:model_app"),
    ("tokenize", "pyratok.cli.model:tokenize"),
    ("reconstruct", "pyratok.cli.model:reconstruct"),
    ("submit", "pyratok.cli.submit:submit"),
    ("jobs", "pyratok.cli.submit:jobs_app"),
    ("dev", "pyratok.cli.dev:app"),
]


def _register() -> None:
    import importlib

    for name, target in SUBCOMMANDS:
        module, attr = target.split(":")
        obj = getattr(importlib.import_module(module), attr)
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=name)
        else:
            app.command(name, context_settings=getattr(obj, "context_settings", None))(obj)


_register()

if __name__ == "__main__":
    app()
