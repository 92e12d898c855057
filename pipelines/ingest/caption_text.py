"""Make source captions safe to store: valid UTF-8, bounded length, no NULs.

The table reader keeps undecodable bytes as lone surrogates, so a caption
that was not UTF-8 in the metadata is detectable here; depending on the
config it is repaired (U+FFFD) and flagged, or the row is rejected.
"""

from __future__ import annotations

import re

from pyratok.pipelines.ingest import reasons
from pyratok.pipelines.ingest.config import CaptionTextConfig
from pyratok.pipelines.ingest.reasons import Rejection

_SURROGATE = re.compile("[\udc80-\udcff]")

INVALID_UTF8 = "invalid_utf8"
TRUNCATED = "truncated"


def has_invalid_utf8(text: str) -> bool:
    return bool(_SURROGATE.search(text))


def repair_utf8(text: str) -> str:
    """Lone surrogates from ``surrogateescape`` decoding -> U+FFFD."""
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def clean_caption(text: str, cfg: CaptionTextConfig, field: str = "caption") -> tuple[str, list[str], Rejection | None]:
    """(clean text, issues found, rejection when the config says such a caption rejects the clip)."""
    issues: list[str] = []
    if has_invalid_utf8(text):
        if cfg.invalid_utf8 == "reject":
            return text, [INVALID_UTF8], Rejection(reasons.CAPTION_INVALID_UTF8, f"{field} is not valid UTF-8")
        text = repair_utf8(text)
        issues.append(INVALID_UTF8)
    text = text.replace("\x00", "")
    if len(text) > cfg.max_chars:
        if cfg.too_long == "reject":
            detail = f"{field} has {len(text)} characters (max {cfg.max_chars})"
            return text, [*issues, TRUNCATED], Rejection(reasons.CAPTION_TOO_LONG, detail)
        text = text[: cfg.max_chars]
        issues.append(TRUNCATED)
    return text, issues, None
