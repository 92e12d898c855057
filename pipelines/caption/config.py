"""Typed config of the caption stage (the ``caption:`` section of a preset)."""

from __future__ import annotations

from pyratok.core.config import StrictModel


class CaptionConfig(StrictModel):
    """Filled in by the caption stage."""
