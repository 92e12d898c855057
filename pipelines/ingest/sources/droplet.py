"""DropletVideo-10M: ``url, fps, framestamp`` ("(start,end)" in frames), ``quality_score``
and a caption column (configurable). Local files are named
``{ytid}--{start:06d}_{end:06d}-{quality}.mp4``; the quality label is not in the
metadata, so the file is found by its name prefix in the videos listing."""

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
