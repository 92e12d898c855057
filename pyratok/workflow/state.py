"""The pipeline's state: one record per stage, kept in the output storage (local or S3).

The state lives beside the data it describes (``<root>/pipeline/state.json``),
so it survives the machine that ran the driver and any later driver (another
laptop, a RayJob pod) sees the same history.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

from pyratok.core.storage import Storage, join

STATE_FILE = "pipeline/state.json"

Status = Literal["pending", "running", "completed", "failed"]


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

    def record(self, name: str) -> StageRecord:
        return self.stages.setdefault(name, StageRecord(name=name))


def state_uri(root: str) -> str:
    return join(root, STATE_FILE)


def load_state(storage: Storage, root: str) -> PipelineState:
    uri = state_uri(root)
    if not storage.exists(uri):
        return PipelineState(root=root)
    return PipelineState.model_validate(storage.read_json(uri))


def save_state(storage: Storage, state: PipelineState) -> None:
    """Atomic replace: a killed driver leaves the previous state, never half a file."""
    state.updated_at = time.time()
    storage.write_json(state_uri(state.root), state.model_dump(mode="json"))
