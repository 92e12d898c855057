"""Typed config of the ingest stage (the ``ingest:`` section of a preset)."""

from __future__ import annotations

from pyratok.core.config import StrictModel


class IngestConfig(StrictModel):
    """Filled in by the ingest stage."""
