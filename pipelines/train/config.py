"""Typed config of the training stage (the ``train:`` section of a preset)."""

from __future__ import annotations

from pyratok.core.config import StrictModel


class TrainConfig(StrictModel):
    """Filled in by the training stage."""
