"""What every source parser produces: one :class:`SourceRow` per metadata row.

A parser maps its format's exact column names onto the normalized fields
(design section 3) and raises :class:`RowError` for a row it cannot use; the
row is then rejected as ``bad_metadata`` with that message and the job goes on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

from pyratok.pipelines.ingest.config import SourcesConfig


class RowError(ValueError):
    """This metadata row is unusable; the message says which column and why."""


@dataclass
class SourceRow:
    source_id: str
    """The source's own identity of the clip (file name, clip id, ytid + window)."""
    video: str
    """Video file relative to the videos folder (or an absolute path / URI); with ``video_is_prefix``, a name prefix."""
    window: tuple[float, float] | None = None
    """Clip window in seconds of the source video, when the metadata defines one."""
    caption: str = ""
    captions: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    video_is_prefix: bool = False


class SourceFormat:
    """A metadata format: its required columns and a row parser."""

    name: ClassVar[str]
    required_columns: ClassVar[tuple[str, ...]]

    def required(self, cfg: SourcesConfig) -> tuple[str, ...]:
        return self.required_columns

    def parse(self, record: dict[str, Any], cfg: SourcesConfig) -> SourceRow:
        raise NotImplementedError


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def text(value: Any) -> str:
    """A cell as text ('' when empty); numbers keep their natural spelling."""
    if is_missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def number(record: dict[str, Any], column: str) -> float:
    """A required numeric cell; :class:`RowError` names the column and the bad value."""
    value = record.get(column)
    if is_missing(value):
        raise RowError(f"column {column!r} is empty")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise RowError(f"column {column!r} = {str(value)[:60]!r} is not a number") from None
    if not math.isfinite(out):
        raise RowError(f"column {column!r} = {value!r} is not finite")
    return out


def optional_number(record: dict[str, Any], column: str) -> float | None:
    if is_missing(record.get(column)):
        return None
    try:
        return number(record, column)
    except RowError:
        return None


def scores_from(record: dict[str, Any], names: dict[str, str]) -> dict[str, float]:
    """``{normalized name: value}`` for the score columns present and numeric."""
    out = {}
    for column, name in names.items():
        value = optional_number(record, column)
        if value is not None:
            out[name] = value
    return out


def checked_window(start: float, end: float, what: str) -> tuple[float, float]:
    if start < 0 or end <= start:
        raise RowError(f"{what} window ({start:g}, {end:g}) is empty or negative")
    return round(start, 6), round(end, 6)


_YOUTUBE_HOSTS = ("youtube.com", "www.youtube.com", "m.youtube.com")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def video_id_from_url(url: str) -> str:
    """The video's id in a URL: YouTube's ``v=``/``youtu.be/<id>``/``shorts/<id>``, else the file stem."""
    parsed = urlparse(url.strip())
    host = parsed.netloc.lower()
    if host in _YOUTUBE_HOSTS:
        vid = parse_qs(parsed.query).get("v", [""])[0]
        if not vid and parsed.path.startswith(("/shorts/", "/embed/")):
            vid = parsed.path.split("/")[2]
        if vid:
            return _SAFE.sub("_", vid)
    if host == "youtu.be":
        return _SAFE.sub("_", parsed.path.strip("/").split("/")[0])
    stem = (parsed.path or url).rstrip("/").rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    if not stem:
        raise RowError(f"cannot derive a video id from url {url[:80]!r}")
    return _SAFE.sub("_", stem)
