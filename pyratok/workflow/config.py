"""Typed config of the workflow layer (the ``pipeline:`` section of a preset)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pyratok.core.config import StrictModel

STAGE_ORDER = ("sample-data", "ingest", "caption", "train1", "train2", "train3")


class SourceInput(StrictModel):
    """One raw dataset to ingest: which reader, its metadata file, its videos folder/prefix."""

    source: Literal["droplet", "openvid", "ultravideo", "manifest"]
    metadata: str
    videos: str


class PipelineConfig(StrictModel):
    root: str | None = None
    """Where the pipeline's outputs and state live (local dir or s3://). None: <work_dir>/pipeline."""
    sample_data: bool = False
    """Generate the sample corpus first and ingest all its sources (the embedded default)."""
    sample_clips: int | None = None
    """Clips per source for the sample corpus (None: the generator's default)."""
    sources: list[SourceInput] = Field(default_factory=list)
    """Raw datasets to ingest into the pipeline's dataset (ignored when sample_data is on)."""
    caption_model: str | None = None
    """Captioner dir or s3:// URI. None: build the tiny offline Qwen2.5-VL under <root>/models."""
    base_model: str | None = None
    """A `pyratok model init` dir (or s3://) stage 1 starts from. None: build the tiny preset under <root>/models."""
    stages: list[str] = Field(default_factory=lambda: list(STAGE_ORDER))
    """Which stages this pipeline has, in order (a subset of sample-data, ingest, caption, train1..3)."""
