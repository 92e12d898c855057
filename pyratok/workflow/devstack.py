"""``pyratok dev up|down|status|env``: the cluster path on one machine.

Starts an S3 server (moto), an MLflow tracking server whose artifacts live in
that S3, and a Ray head with token auth — all on 127.0.0.1 — and records them
in ``<dir>/devstack.json`` so ``down`` stops exactly those processes.
``env`` prints the exports that point the CLI at them (``submit``, ``ingest
--output s3://...``, MLflow).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from pyratok.core.logging import get_logger
from pyratok.workflow.services import Service, start_mlflow, start_ray_head, start_s3

log = get_logger(__name__)

STATE_FILE = "devstack.json"
DEV_BUCKET = "pyratok-dev"


def _state_path(root: Path) -> Path:
    return root / STATE_FILE


def load(root: Path) -> list[Service]:
    path = _state_path(root)
    if not path.exists():
        return []
    return [Service(**item) for item in json.loads(path.read_text())]


def _save(root: Path, services: list[Service]) -> None:
    path = _state_path(root)
    path.write_text(json.dumps([s.to_dict() for s in services], indent=2))
    path.chmod(0o600)  # it holds the dev S3 key pair


def up(root: Path, *, num_cpus: int | None = None, auth: bool = True) -> list[Service]:
    """Start what is not running yet; idempotent."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    running = {s.name: s for s in load(root) if s.alive()}
    if "s3" not in running:
        running["s3"] = start_s3(root)
        _create_bucket(running["s3"])
    if "mlflow" not in running:
        running["mlflow"] = start_mlflow(
            root, artifacts=f"s3://{DEV_BUCKET}/mlflow-artifacts", env=running["s3"].env
        )
    if "ray" not in running:
        running["ray"] = start_ray_head(root, num_cpus=num_cpus, auth=auth, env=running["s3"].env)
    services = [running[name] for name in ("s3", "mlflow", "ray")]
    _save(root, services)
    return services


def down(root: Path) -> list[str]:
    """Stop every recorded service; returns the names stopped."""
    stopped = []
    for service in load(root):
        if service.alive():
            service.stop()
            stopped.append(service.name)
    _state_path(root).unlink(missing_ok=True)
    return stopped


def env_exports(services: list[Service]) -> dict[str, str]:
    out: dict[str, str] = {}
    for service in services:
        out.update(service.env)
    return out


def render_exports(services: list[Service]) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env_exports(services).items())


def _create_bucket(s3: Service) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3.url,
        aws_access_key_id=s3.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3.env["AWS_SECRET_ACCESS_KEY"],
        region_name=s3.env["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=DEV_BUCKET)
