"""MLflow helpers shared by every stage.

One MLflow run per stage execution, optionally nested under a pipeline run;
params = the stage's own sections of the resolved config (flattened, credentials
redacted, unset values left out), the whole resolved config as one ``config.yaml``
artifact; metrics and artifacts logged by the stage. The driver creates the run and passes its id to
Ray workers, which log into it by id (rank 0 only), so the run id is known and
printed even before a distributed job starts.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from pydantic import BaseModel

from pyratok.core.config import StrictModel, flatten
from pyratok.core.logging import get_logger
from pyratok.core.secrets import redact, strip_url_credentials
from pyratok.core.storage import Storage, basename, is_s3

log = get_logger(__name__)

PARENT_TAG = "mlflow.parentRunId"
STAGE_TAG = "pyratok.stage"
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value
PARAM_BATCH = 100  # MLflow's limit on params per log_batch


class TrackingConfig(StrictModel):
    enabled: bool = True
    tracking_uri: str | None = None
    """None: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<work_dir>/mlflow.db``."""
    experiment: str = "pyratok"
    artifact_location: str | None = None
    """Artifact root for a new experiment (local dir or s3://). None: the server's default,
    or ``<work_dir>/mlflow-artifacts`` for the local sqlite store."""
    registered_model: str | None = "pyratok"
    """Model Registry name each training stage's tokenizer becomes a version of (alias ``stage<N>``); None: no registry."""


_SET_HERE: set[str] = set()
"""URIs :func:`configure` gave ``mlflow.set_tracking_uri``, which also exports ``$MLFLOW_TRACKING_URI``
(for child processes: a local Ray's workers inherit it). Such a value is not the user's choice, so a
later run with another work dir in the same process gets its own store, not the previous one's."""


def resolve_tracking_uri(cfg: TrackingConfig, work_dir: str) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = cfg.tracking_uri or (env if env not in _SET_HERE else None)
    if uri:
        return uri
    path = Path(work_dir).expanduser().resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def configure(cfg: TrackingConfig, work_dir: str) -> str:
    """Point mlflow at the tracking store and make sure the experiment exists; returns its id."""
    import mlflow

    uri = resolve_tracking_uri(cfg, work_dir)
    if os.environ.get("MLFLOW_TRACKING_URI") != uri:
        _SET_HERE.add(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    location = cfg.artifact_location
    if location is None and uri.startswith("sqlite:"):
        location = (Path(work_dir).expanduser().resolve() / "mlflow-artifacts").as_uri()
    try:
        return client.create_experiment(cfg.experiment, artifact_location=location)
    except Exception:  # noqa: BLE001 - another process created it between our get and create
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise
        return exp.experiment_id


CONFIG_ARTIFACT = "config.yaml"


def config_params(config: BaseModel | dict, sections: Sequence[str] | None = None) -> dict[str, str]:
    """Flattened, redacted, MLflow-safe params from a resolved config: only the dotted ``sections``
    (e.g. ``("model", "train")``) when given; unset (None) values are no params at all."""
    data = redact(config.model_dump(mode="json") if isinstance(config, BaseModel) else config)
    if sections is not None:
        picked: dict[str, Any] = {}
        for section in sections:
            value: Any = data
            for part in section.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                picked.update(flatten(value, section))
        data = picked
    return {key: str(value)[:MAX_PARAM_LEN] for key, value in flatten(data).items() if value is not None}


def log_params(params: dict[str, Any], run_id: str | None = None) -> None:
    import mlflow
    from mlflow.entities import Param

    client = mlflow.MlflowClient()
    run_id = run_id or mlflow.active_run().info.run_id
    items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in redact(params).items()]
    for start in range(0, len(items), PARAM_BATCH):
        client.log_batch(run_id, params=items[start : start + PARAM_BATCH])


@contextlib.contextmanager
def stage_run(
    cfg: TrackingConfig,
    work_dir: str,
    stage: str,
    config: BaseModel | dict | None = None,
    *,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    sections: Sequence[str] | None = None,
) -> Iterator[Any]:
    """Start (and end) the MLflow run of one stage execution.

    ``config``: the resolved config, logged whole as ``config.yaml``; its ``sections`` (all when
    None) become the run's params. Yields the active ``mlflow.ActiveRun``, or ``None`` when
    tracking is off. The run ends FAILED if the body raises, FINISHED otherwise.
    """
    if not cfg.enabled:
        yield None
        return
    import mlflow

    from pyratok.core.provenance import run_tags

    experiment_id = configure(cfg, work_dir)
    all_tags = {STAGE_TAG: stage, **run_tags(), **(tags or {})}
    parent_run_id = parent_run_id or os.environ.get("PYRATOK_PARENT_RUN_ID")
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags=all_tags,
        nested=mlflow.active_run() is not None,
    )
    log.info("MLflow run %s (%s) at %s", run.info.run_id, stage, strip_url_credentials(mlflow.get_tracking_uri()))
    status = "FAILED"
    try:
        if config is not None:
            data = redact(config.model_dump(mode="json") if isinstance(config, BaseModel) else config)
            log_params(config_params(data, sections), run.info.run_id)  # redacting twice changes nothing
            mlflow.log_dict(data, CONFIG_ARTIFACT)
        yield run
        status = "FINISHED"
    finally:
        mlflow.end_run(status=status)


def log_file_artifact(storage: Storage, uri: str, artifact_path: str | None = None, run_id: str | None = None) -> None:
    """Log a local or S3 file as an artifact of the active (or given) run."""
    import mlflow

    client = mlflow.MlflowClient()
    run_id = run_id or mlflow.active_run().info.run_id
    if not is_s3(uri):
        client.log_artifact(run_id, str(uri), artifact_path)
        return
    with tempfile.TemporaryDirectory(prefix="pyratok-artifact-") as tmp:
        local = storage.download(uri, Path(tmp) / basename(uri))
        client.log_artifact(run_id, str(local), artifact_path)


def run_url(run_id: str) -> str:
    """A link to the run: the server's UI page when tracking over HTTP, else the run id in the store."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        run = mlflow.MlflowClient().get_run(run_id)
        return f"{strip_url_credentials(uri).rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    return f"{strip_url_credentials(uri)} run {run_id}"


def log_dataset(storage: Storage, root: str, context: str) -> str | None:
    """The dataset root as an MLflow input of the active run (``log_input``), its digest the manifest's sha256.

    Returns the digest, or None when the root has no manifest (nothing to pin it by).
    """
    import hashlib

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from pyratok.core.dataset import manifest_uri

    uri = manifest_uri(root)
    if not storage.exists(uri):
        return None
    sha = hashlib.sha256()
    with storage.open_read(uri) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    digest = sha.hexdigest()[:16]
    with warnings.catch_warnings():  # a local path matches two equivalent source types; MLflow says which it took
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(root)
    dataset = MetaDataset(source, name=basename(root.rstrip("/")) or root, digest=digest)
    mlflow.log_input(dataset, context=context)
    return digest
