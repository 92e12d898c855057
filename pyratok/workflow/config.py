"""Typed config of the workflow layer (the ``pipeline:`` section of a preset).

What each stage consumes is configured in that stage's own section
(``ingest.inputs``, ``caption.model``, ``train.stages.stageN``); this section
only says where the pipeline lives and which stages it has.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from pyratok.core.config import StrictModel

STAGE_ORDER = ("sample-data", "ingest", "caption", "vae-warmup", "train1", "eval1", "train2", "eval2", "train3", "eval")
"""vae-warmup runs only with ``train.vae_warmup.steps`` > 0, eval1/eval2 only with ``eval.after_each_stage``."""


class LockConfig(StrictModel):
    """The driver lock on a pipeline root (``<root>/pipeline/lock.json``).

    A driver refreshes its heartbeat every ``heartbeat_s``; a lock whose heartbeat is
    older than ``stale_after_s`` belongs to a driver that is gone or frozen, and only
    then may ``pipeline run --take-over`` take it. Compared across machines, so keep
    ``stale_after_s`` well above the clock skew between them.
    """

    stale_after_s: float = Field(300.0, gt=0)
    heartbeat_s: float = Field(15.0, gt=0)

    @model_validator(mode="after")
    def _beat_within_timeout(self) -> "LockConfig":
        if self.heartbeat_s * 2 > self.stale_after_s:
            raise ValueError(
                f"pipeline.lock.heartbeat_s ({self.heartbeat_s}) must be at most half of stale_after_s "
                f"({self.stale_after_s}), or a live driver's lock looks stale between two heartbeats"
            )
        return self


class PipelineConfig(StrictModel):
    root: str | None = None
    """Where the pipeline's outputs and state live (local dir or s3://). None: <work_dir>/pipeline."""
    sample_data: bool = False
    """Generate the sample corpus first and ingest all its sources (the embedded default)."""
    sample_clips: int = 0
    """Extra generated clips per source in the sample corpus (0: the fixed small corpus)."""
    stages: list[str] = Field(default_factory=lambda: list(STAGE_ORDER))
    """Which stages this pipeline has, in pipeline order."""
    lock: LockConfig = Field(default_factory=LockConfig)
    """One driver at a time per root: heartbeat and stale timeout of its lock."""

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in STAGE_ORDER]
        if unknown:
            raise ValueError(f"unknown pipeline stage(s) {unknown}; choose from {list(STAGE_ORDER)}")
        return value
