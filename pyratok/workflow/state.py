"""The pipeline's state: one record per stage, kept in the output storage (local or S3).

The state lives beside the data it describes (``<root>/pipeline/state.json``),
so it survives the machine that ran the driver and any later driver (another
laptop, a RayJob pod) sees the same history.

Every write is a compare-and-swap against the version this driver last read or
wrote (S3 ``If-Match`` / ``If-None-Match``, locally an exclusive lock plus an
atomic replace): the driver lock keeps a second driver off the root, and the
CAS makes sure that if two ever do write (a frozen driver waking up after a
take-over), the late one fails loudly instead of erasing the other's records.
"""

from __future__ import annotations

import json
import time
from typing import Literal

from pydantic import BaseModel, Field, PrivateAttr

from pyratok.core.storage import PreconditionFailed, Storage, StorageError, join

STATE_FILE = "pipeline/state.json"

Status = Literal["pending", "running", "completed", "failed"]
"""What a record stores. ``pipeline status`` also shows ``interrupted``: a ``running`` record
whose driver is gone (its lock is missing, stale, or held by a dead process), and ``stale``."""


class StateConflictError(StorageError):
    """The state changed on storage since this driver read it; nothing was overwritten."""


class StageRecord(BaseModel):
    name: str
    status: Status = "pending"
    fingerprint: str | None = None
    """Hash of what decides the stage's result: its config keys + its inputs' fingerprints."""
    config_fingerprint: str | None = None
    inputs: dict[str, str] = Field(default_factory=dict)
    """Input name -> URI (or value) the stage consumed."""
    input_fingerprints: dict[str, str] = Field(default_factory=dict)
    """Upstream stage -> the output fingerprint it had when this stage consumed it."""
    outputs: dict[str, str] = Field(default_factory=dict)
    output_fingerprint: str | None = None
    mlflow_run_id: str | None = None
    upstream_runs: dict[str, str] = Field(default_factory=dict)
    """Upstream stage -> the MLflow run id that produced what this stage consumed (lineage)."""
    started_at: float | None = None
    ended_at: float | None = None
    attempts: int = 0
    error: str | None = None
    driver: str | None = None
    """Token of the driver lock under which the last attempt ran (see pyratok.workflow.lock):
    a ``running`` record whose driver no longer holds a live lock was interrupted."""

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


class PipelineState(BaseModel):
    root: str
    stages: dict[str, StageRecord] = Field(default_factory=dict)
    pipeline_runs: list[str] = Field(default_factory=list)
    """MLflow run ids of each `pipeline run|rerun` invocation, oldest first."""
    updated_at: float | None = None
    _etag: str | None = PrivateAttr(default=None)
    """Version of state.json this object was read from or last written as (None: not on storage)."""

    def record(self, name: str) -> StageRecord:
        return self.stages.setdefault(name, StageRecord(name=name))


def state_uri(root: str) -> str:
    return join(root, STATE_FILE)


def load_state(storage: Storage, root: str) -> PipelineState:
    try:
        data, etag = storage.read_bytes_versioned(state_uri(root))
    except FileNotFoundError:
        return PipelineState(root=root)
    state = PipelineState.model_validate(json.loads(data))
    state._etag = etag
    return state


def save_state(storage: Storage, state: PipelineState) -> None:
    """Compare-and-swap the state over the version it was loaded from; atomic, so a killed
    driver leaves the previous state, never half a file. StateConflictError if another writer
    changed it in between (reload, then decide; never blindly retry)."""
    uri = state_uri(state.root)
    previous = state.updated_at
    state.updated_at = time.time()
    data = json.dumps(state.model_dump(mode="json"), indent=2, sort_keys=True).encode("utf-8")
    try:
        state._etag = storage.write_bytes_if(uri, data, etag=state._etag)
    except PreconditionFailed as exc:
        state.updated_at = previous
        raise StateConflictError(
            f"pipeline state {uri} was changed by another writer since this driver read it; "
            f"not overwriting it ({exc})"
        ) from exc
