"""Training checkpoints: what a checkpoint folder holds, and how a stage finds where to start.

A checkpoint (one Ray Train checkpoint folder, merged from every rank)::

    state/                        optimizer/model state of the strategy (DeepSpeed: per-rank ZeRO files)
    train_state/rank_00000.json   per rank: step, data-stream positions, skip counters, optimizer digest
    train_state/rng_rank_00000.pt per rank: torch / numpy / python RNG states (exact masking replay)
    model/                        the exported tokenizer (``save_pretrained``): seeds the next stage
    meta.json                     rank 0: stage, step, steps, MLflow run id, strategy, world size

``--init-from`` takes an exported model folder, a checkpoint folder (its
``model/`` is used) or an MLflow run id of an earlier stage (its
``pyratok.train.model_uri`` tag). ``--resume`` reads the per-stage pointer that
the driver writes beside the runs (``<storage_path>/stage<N>.latest.json``).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyratok.core.storage import Storage, is_s3, join, parent

MODEL_DIR = "model"
META_FILE = "meta.json"
TRAIN_STATE_DIR = "train_state"
MODEL_URI_TAG = "pyratok.train.model_uri"
CHECKPOINT_URI_TAG = "pyratok.train.checkpoint_uri"
INIT_RUN_TAG = "pyratok.train.init_from_run"
RUN_ID = re.compile(r"^(runs:/)?([0-9a-f]{32})(?:/model)?/?$")


@dataclass
class RankState:
    """One rank's progress: what a restart needs beyond the strategy's own state."""

    step: int
    micro_batches: int
    positions: dict[str, dict] = field(default_factory=dict)
    """Loader stream role -> StreamState dict."""
    received: int = 0
    loader_workers: int = 0
    events: dict[str, int] = field(default_factory=dict)
    optimizer_digest: str = ""
    restarts: list[int] = field(default_factory=list)
    """Steps this run was restarted from (Ray Train recoveries and --resume)."""

    @classmethod
    def from_dict(cls, data: dict) -> "RankState":
        return cls(**data)


def rank_state_path(directory: Path, rank: int) -> Path:
    return Path(directory) / TRAIN_STATE_DIR / f"rank_{rank:05d}.json"


def rng_path(directory: Path, rank: int) -> Path:
    return Path(directory) / TRAIN_STATE_DIR / f"rng_rank_{rank:05d}.pt"


def write_rank_state(directory: Path, rank: int, state: RankState) -> None:
    path = rank_state_path(directory, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(state), indent=1, sort_keys=True))
    torch.save(
        {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
         "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        rng_path(directory, rank),
    )  # fmt: skip


def read_rank_state(directory: Path, rank: int) -> RankState:
    path = rank_state_path(directory, rank)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no state for rank {rank} (was it written with fewer workers?)")
    return RankState.from_dict(json.loads(path.read_text()))


def read_rng(directory: Path, rank: int) -> dict | None:
    """A rank's saved RNG states (applied later with ``apply_rng``, once the loader has started)."""
    path = rng_path(directory, rank)
    return torch.load(path, weights_only=False) if path.is_file() else None


def apply_rng(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def write_meta(directory: Path, meta: dict) -> None:
    (Path(directory) / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))


def read_meta(storage: Storage, checkpoint_uri: str) -> dict:
    return storage.read_json(join(checkpoint_uri, META_FILE))


def read_rank_states(storage: Storage, checkpoint_uri: str, world_size: int) -> list[RankState]:
    return [
        RankState.from_dict(storage.read_json(join(checkpoint_uri, TRAIN_STATE_DIR, f"rank_{r:05d}.json")))
        for r in range(world_size)
    ]


# -- where a stage starts from ------------------------------------------------
@dataclass
class InitSource:
    model_uri: str
    """An exported tokenizer folder (local or s3://)."""
    run_id: str | None = None
    """MLflow run of the stage it came from, when known."""


def resolve_init_from(storage: Storage, spec: str) -> InitSource:
    """The exported model to start from, named by: a model folder, a training checkpoint (local or
    s3://), an MLflow run id / ``runs:/<id>[/model]``, a registered ``models:/<name>@<alias>`` (or
    ``/<version>``, ``/latest``), another ``runs:/`` artifact path, or a Hugging Face Hub repo id.

    A run or registered version of ours resolves to the checkpoint it exported (every worker reads
    that from shared storage) while it still exists; otherwise the MLflow URI itself is loaded.
    """
    from pyratok.model.sources import hub_repo, is_mlflow_uri

    spec = str(spec).strip()
    match = RUN_ID.match(spec)
    if match and not storage.exists(spec):
        return _from_run(match.group(2), fallback=f"runs:/{match.group(2)}/{MODEL_DIR}", storage=storage)
    if spec.startswith("models:/"):
        return _from_registry(storage, spec)
    if is_mlflow_uri(spec):
        return InitSource(spec, None)
    if not is_s3(spec) and not Path(spec).expanduser().exists() and hub_repo(spec) is not None:
        return InitSource(spec, None)
    if not is_s3(spec):
        spec = str(Path(spec).expanduser().resolve())
    if storage.exists(join(spec, MODEL_DIR)) or _has_files(storage, join(spec, MODEL_DIR)):
        meta = _try_meta(storage, spec)
        return InitSource(join(spec, MODEL_DIR), meta.get("mlflow_run_id"))
    if _has_files(storage, spec):
        meta = _try_meta(storage, parent(spec))  # <checkpoint>/model: the checkpoint's meta is one up
        return InitSource(spec, meta.get("mlflow_run_id"))
    raise FileNotFoundError(
        f"--init-from {spec!r} is neither an exported model folder, a training checkpoint, nor an MLflow run id"
    )


def _has_files(storage: Storage, uri: str) -> bool:
    if not is_s3(uri):
        return Path(uri).is_dir() and any(Path(uri).iterdir())
    return bool(storage.list(uri))


def _try_meta(storage: Storage, checkpoint_uri: str) -> dict:
    try:
        return read_meta(storage, checkpoint_uri)
    except (FileNotFoundError, ValueError):
        return {}


def _from_registry(storage: Storage, spec: str) -> InitSource:
    import mlflow

    from pyratok.model.sources import pinned_version

    name, number = pinned_version(spec)
    pinned = f"models:/{name}/{number}"
    client = mlflow.MlflowClient()
    version = client.get_model_version(name, number)
    if version.run_id and str(version.source).rstrip("/") == f"runs:/{version.run_id}/{MODEL_DIR}":
        try:
            uri = client.get_run(version.run_id).data.tags.get(MODEL_URI_TAG)
        except Exception:  # noqa: BLE001 - the run was deleted: the registered files still load
            uri = None
        if uri and _has_files(storage, uri):
            return InitSource(uri, version.run_id)
    return InitSource(pinned, version.run_id or None)


def _from_run(run_id: str, *, fallback: str | None = None, storage: Storage | None = None) -> InitSource:
    import mlflow

    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - mlflow raises its own types for unknown runs
        raise FileNotFoundError(f"--init-from {run_id}: no such MLflow run at {mlflow.get_tracking_uri()} ({exc})") from None
    uri = run.data.tags.get(MODEL_URI_TAG)
    if uri and fallback and not _has_files(storage or Storage(), uri):
        return InitSource(fallback, run_id)  # the checkpoint is gone; the run's logged copy is not
    if not uri:
        raise FileNotFoundError(
            f"--init-from {run_id}: MLflow run has no {MODEL_URI_TAG} tag (status {run.info.status}); "
            "it is not a finished training stage"
        )
    return InitSource(uri, run_id)


def latest_stage_run(experiment_id: str, stage: int) -> InitSource:
    """``--init-from latest``: the newest FINISHED ``train-stage<stage>`` run of the experiment that exported a model."""
    import mlflow

    from pyratok.core.tracking import STAGE_TAG

    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{STAGE_TAG}` = 'train-stage{stage}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    for run in runs:
        uri = run.data.tags.get(MODEL_URI_TAG)
        if uri:
            return InitSource(uri, run.info.run_id)
    raise FileNotFoundError(
        f"--init-from latest: no finished stage-{stage} run with an exported model in MLflow experiment "
        f"{experiment_id} at {mlflow.get_tracking_uri()}; train stage {stage} first or pass its checkpoint"
    )


# -- resume pointers ------------------------------------------------------------
def latest_pointer_uri(storage_path: str, stage: int) -> str:
    return join(storage_path, f"stage{stage}.latest.json")


def write_latest(storage: Storage, storage_path: str, stage: int, info: dict[str, Any]) -> None:
    storage.write_json(latest_pointer_uri(storage_path, stage), info)


def read_latest(storage: Storage, storage_path: str, stage: int) -> dict:
    uri = latest_pointer_uri(storage_path, stage)
    if not storage.exists(uri):
        raise FileNotFoundError(f"--resume: no earlier stage-{stage} run recorded under {storage_path} ({uri} is missing)")
    return storage.read_json(uri)
