"""Submit any stage (or the whole pipeline) to a Ray cluster through the Ray Jobs API.

The job runs the same CLI entry point a user runs locally
(``python -m pyratok.cli.main <stage> ...``). Its working dir is a staged copy
of this package's source (so a cluster image without pyratok installed still
runs it; an image with it installed runs the same code) plus the resolved
config as ``job-config.yaml``, so presets and ``--set`` overrides resolve here,
once, exactly as they would locally.

Environment variables reach the job by *name*: the values are read from this
shell and put in the job's runtime_env; logs and output name them, never show
them. Credentials are forwarded only when named explicitly (``--env``),
because a job's runtime_env is visible to everyone with access to the cluster
dashboard; clusters with instance roles / pod identities need none.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pyratok.core.config import to_yaml
from pyratok.core.logging import get_logger
from pyratok.core.secrets import is_sensitive_key, strip_url_credentials

log = get_logger(__name__)

JOB_CONFIG = "job-config.yaml"
# Non-secret settings a job needs to find the same services as this shell.
DEFAULT_ENV_NAMES = (
    "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
    "HF_HUB_OFFLINE", "PYRATOK_LOG_LEVEL",
)  # fmt: skip
SOURCE_ITEMS = ("pyratok", "pipelines", "model", "configs", "infra", "setup.py", "pyproject.toml", "README.md")
STAGES = ("sample-data", "ingest", "caption", "train", "pipeline", "model", "tokenize", "reconstruct")


class SubmitError(ValueError):
    """A submission that cannot go out as asked; the message says why."""


@dataclass
class JobSpec:
    entrypoint: str
    runtime_env: dict
    forwarded_env: list[str]
    submission_id: str | None = None


def source_root() -> Path:
    """The folder holding this package's source tree (a checkout, or site-packages for a wheel)."""
    import pyratok

    return Path(pyratok.__file__).resolve().parent.parent


def api_address(address: str | None) -> str:
    """The Jobs API (dashboard) URL: ``--address``, else ``$RAY_API_SERVER_ADDRESS``, else an http ``$RAY_ADDRESS``."""
    for candidate in (address, os.environ.get("RAY_API_SERVER_ADDRESS"), os.environ.get("RAY_ADDRESS")):
        if candidate and candidate.startswith(("http://", "https://")):
            return candidate.rstrip("/")
    raise SubmitError(
        "no Ray Jobs address: pass --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS "
        "(`pyratok dev env` prints it for the local dev stack)"
    )


def forwarded_env(names: Iterable[str] = ()) -> dict[str, str]:
    """``{name: value}`` for the default names that are set plus every explicitly named one."""
    explicit = list(names)
    missing = [n for n in explicit if n not in os.environ]
    if missing:
        raise SubmitError(f"--env names variables that are not set in this shell: {', '.join(missing)}")
    out = {n: os.environ[n] for n in DEFAULT_ENV_NAMES if n in os.environ}
    out.update({n: os.environ[n] for n in explicit})
    return out


def stage_working_dir(dest: Path, config_yaml: str) -> Path:
    """Copy the package source + the resolved config into ``dest`` (the job's working_dir)."""
    root = source_root()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".venv*", "pyratok-work")
    for item in SOURCE_ITEMS:
        src = root / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / item)
    (dest / JOB_CONFIG).write_text(config_yaml)
    return dest


# A command group submitted without naming its subcommand runs this one.
DEFAULT_SUBCOMMANDS = {"pipeline": "run", "model": "init"}


def resolve_command(stage: str, stage_args: list[str]) -> tuple[list[str], list[str], bool]:
    """The CLI words of ``stage`` (descending into a group: ``pipeline`` -> ``pipeline run``,
    ``pipeline -- rerun train3`` -> ``pipeline rerun``), the remaining arguments, and whether that
    command takes ``--config`` (read from the CLI itself, so the two cannot drift apart)."""
    import typer

    from pyratok.cli.main import app

    command = typer.main.get_command(app).commands[stage]
    words, rest = [stage], list(stage_args)
    while hasattr(command, "commands"):  # a group (typer ships its own click: no isinstance check)
        if rest and rest[0] in command.commands:
            name = rest.pop(0)
        elif stage in DEFAULT_SUBCOMMANDS and not command.invoke_without_command:
            name = DEFAULT_SUBCOMMANDS[stage]
        else:
            break  # a group that runs itself (``caption --shards ...``)
        words.append(name)
        command = command.commands[name]
    takes_config = any("--config" in getattr(p, "opts", ()) for p in command.params)
    return words, rest, takes_config


def build_job(
    stage: str,
    stage_args: list[str],
    *,
    config,
    working_dir: Path | None,
    env_names: Iterable[str] = (),
    pip: list[str] | None = None,
    submission_id: str | None = None,
) -> JobSpec:
    """The entrypoint and runtime_env for one submission (nothing is sent)."""
    if stage not in STAGES:
        raise SubmitError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if any(a in ("--config", "-c") or a.startswith("--config=") for a in stage_args):
        raise SubmitError("pass --config to `pyratok submit` itself: the resolved config is shipped with the job")
    env = forwarded_env(env_names)
    runtime_env: dict = {"env_vars": env}
    words, stage_args, takes_config = resolve_command(stage, stage_args)
    parts = ["python", "-m", "pyratok.cli.main", *words]
    if working_dir is not None:
        runtime_env["working_dir"] = str(working_dir)
        if takes_config:
            parts += ["--config", JOB_CONFIG]
    if pip:
        runtime_env["pip"] = list(pip)
    parts += stage_args
    import shlex

    return JobSpec(" ".join(shlex.quote(p) for p in parts), runtime_env, sorted(env), submission_id)


def describe(spec: JobSpec) -> str:
    """What is being submitted, safe to print: entrypoint + env var NAMES (secret ones flagged)."""
    names = [f"{n} (credential)" if is_sensitive_key(n) else n for n in spec.forwarded_env]
    return f"entrypoint: {spec.entrypoint}\nforwarded env: {', '.join(names) or '(none)'}"


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(api_address(address), headers=auth_headers())


def auth_headers() -> dict[str, str] | None:
    """The token of *this* environment, read now. Ray's own loader caches the first token a
    process sees, so a CLI or test that talks to a second cluster would send the stale one."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else None


AGENT_NOT_READY = "No available agent"
AGENT_WAIT_S = 120.0


def submit(spec: JobSpec, address: str | None, *, agent_wait_s: float = AGENT_WAIT_S) -> str:
    """Send the job; a cluster that just started answers before its job agent is up, so that
    one condition is retried for ``agent_wait_s``."""
    c = client(address)
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            job_id = c.submit_job(entrypoint=spec.entrypoint, runtime_env=spec.runtime_env, submission_id=spec.submission_id)
            break
        except RuntimeError as exc:
            if AGENT_NOT_READY not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    log.info("submitted %s to %s", job_id, strip_url_credentials(api_address(address)))
    return job_id


def submit_stage(
    stage: str,
    stage_args: list[str],
    *,
    config,
    address: str | None,
    env_names: Iterable[str] = (),
    use_working_dir: bool = True,
    pip: list[str] | None = None,
) -> str:
    """Stage the source + resolved config, submit, return the job id."""
    with tempfile.TemporaryDirectory(prefix="pyratok-job-") as tmp:
        working_dir = stage_working_dir(Path(tmp), to_yaml(config)) if use_working_dir else None
        spec = build_job(stage, stage_args, config=config, working_dir=working_dir, env_names=env_names, pip=pip)
        log.info("%s", describe(spec))
        # The working dir is uploaded during submit_job, so the temp dir may go right after.
        return submit(spec, address)


def wait(job_id: str, address: str | None, *, timeout_s: float | None = None, poll_s: float = 1.0) -> str:
    """Block until the job ends; returns its final status name."""
    c = client(address)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = c.get_job_status(job_id)
        if status.is_terminal():
            return status.value
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status.value} after {timeout_s}s")
        time.sleep(poll_s)


def follow_logs(job_id: str, address: str | None, write=print) -> None:
    """Stream the job's logs until it ends."""
    import asyncio

    async def _tail() -> None:
        async for chunk in client(address).tail_job_logs(job_id):
            write(chunk.rstrip("\n"))

    asyncio.run(_tail())
