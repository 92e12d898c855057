"""Typed config of the PyraTok model (the ``model:`` section of a preset)."""

from __future__ import annotations

from pyratok.core.config import StrictModel


class ModelConfig(StrictModel):
    """Filled in by the model package."""
