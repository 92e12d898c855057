"""DropletVideo-10M: ``url, fps, framestamp`` ("(start,end)" in frames), ``quality_score``
and a caption column (configurable). The official downloader names clips
``{ytid}--{start:06d}_{end:06d}-{quality_score}.mp4``, the suffix being the score's value as
Python prints it (``4.5``, ``-0.25``, ``1e-05``); the file is found by its name prefix in the
videos listing (:func:`clip_file_prefix`), so the score's spelling never has to match."""

from __future__ import annotations

import re
from typing import Any

from pyratok.pipelines.ingest.config import SourcesConfig
from pyratok.pipelines.ingest.sources.base import (
    RowError,
    SourceFormat,
    SourceRow,
    checked_window,
    number,
    scores_from,
    text,
    video_id_from_url,
)

_FRAMESTAMP = re.compile(r"^\s*[\(\[]\s*(\d+)\s*,\s*(\d+)\s*[\)\]]\s*$")
_CLIP_NAME = re.compile(r"^(?P<prefix>.+--\d+_\d+-)(?P<suffix>.*)$")
"""Greedy up to the LAST ``--<start>_<end>-``: a YouTube id may hold ``-``/``_``, a score ``-`` or ``e-``."""
_NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")
SCORE_COLUMNS = {"quality_score": "quality"}


def parse_framestamp(value: str) -> tuple[int, int]:
    """``"(120,360)"`` -> (120, 360); anything else is a :class:`RowError`."""
    match = _FRAMESTAMP.match(value or "")
    if not match:
        raise RowError(f"framestamp {str(value)[:60]!r} is not '(start,end)' in frames")
    start, end = int(match.group(1)), int(match.group(2))
    if end <= start:
        raise RowError(f"framestamp {value!r} ends before it starts")
    return start, end


def droplet_file_prefix(ytid: str, start: int, end: int) -> str:
    return f"{ytid}--{start:06d}_{end:06d}-"


def clip_file_prefix(stem: str) -> tuple[str, str] | None:
    """``"XyZ-1_a--000050_000175--0.25"`` -> (``"XyZ-1_a--000050_000175-"``, ``"-0.25"``): the prefix a
    row looks its clip up by, and the suffix (quality score, or a label such as ``720p``); None for a
    name that is no DropletVideo clip. ``stem`` is the file name without its extension."""
    match = _CLIP_NAME.match(stem)
    return (match.group("prefix"), match.group("suffix")) if match else None


def suffix_rank(suffix: str) -> float:
    """Higher is better among several files of one clip: the score's value, or a label's number
    (``1080p`` over ``720p``); a suffix with no number ranks last."""
    match = _NUMBER.search(suffix)  # always a valid float literal when it matches
    return float(match.group(0)) if match else float("-inf")


class Droplet(SourceFormat):
    name = "droplet"
    required_columns = ("url", "fps", "framestamp")

    def required(self, cfg: SourcesConfig) -> tuple[str, ...]:
        return (*self.required_columns, cfg.droplet_caption_column)

    def parse(self, record: dict[str, Any], cfg: SourcesConfig) -> SourceRow:
        url = text(record.get("url"))
        if not url:
            raise RowError("column 'url' is empty")
        ytid = video_id_from_url(url)
        start, end = parse_framestamp(text(record.get("framestamp")))
        fps = number(record, "fps")
        if fps <= 0:
            raise RowError(f"column 'fps' = {fps:g} must be positive")
        prefix = droplet_file_prefix(ytid, start, end)
        return SourceRow(
            source_id=prefix[:-1],
            video=prefix,
            video_is_prefix=True,
            window=checked_window(start / fps, end / fps, "framestamp"),
            caption=text(record.get(cfg.droplet_caption_column)),
            scores=scores_from(record, SCORE_COLUMNS),
            tags={"ytid": ytid},
        )
