"""The root config: every stage's section plus the shared runtime sections.

One preset (e.g. ``configs/local.yaml``) configures the whole pipeline; each
stage reads its own section and the shared ones (work_dir, storage, tracking,
ray). Section types live with the code they configure.
"""

from __future__ import annotations

import os
from typing import Iterable

from pydantic import Field

from pyratok.core.config import StrictModel, load_config
from pyratok.core.ray_runtime import RayConfig
from pyratok.core.storage import StorageConfig
from pyratok.core.tracking import TrackingConfig
from pyratok.model.config import ModelConfig
from pyratok.pipelines.caption.config import CaptionConfig
from pyratok.pipelines.eval.config import EvalConfig
from pyratok.pipelines.ingest.config import IngestConfig
from pyratok.pipelines.train.config import TrainConfig
from pyratok.workflow.config import PipelineConfig

DEFAULT_PRESET = "local.yaml"


class PyratokConfig(StrictModel):
    work_dir: str = "pyratok-work"
    """Local scratch + default home of the embedded default's outputs and MLflow store."""
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)


def load(path: str | os.PathLike | None = DEFAULT_PRESET, overrides: Iterable[str] = (), extra: dict | None = None) -> PyratokConfig:
    """Resolve a preset (default: the embedded ``local.yaml``) with overrides into a typed config."""
    return load_config(PyratokConfig, path, overrides, extra)
