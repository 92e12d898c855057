"""A user's own manifest (CSV / JSONL / parquet): ``path, caption`` plus optional columns.

Optional: ``id`` (source id; default the path), ``start_s``/``end_s`` (a window to cut),
score columns (``aesthetic``, ``motion``, ``quality`` or any ``*_score``), anything else
is kept as a string tag."""

from __future__ import annotations

from typing import Any

from pyratok.pipelines.ingest.config import SourcesConfig
from pyratok.pipelines.ingest.sources.base import (
    RowError,
    SourceFormat,
    SourceRow,
    checked_window,
    is_missing,
    optional_number,
    text,
)

SCORE_NAMES = ("aesthetic", "motion", "quality", "temporal_consistency")
WINDOW_COLUMNS = ("start_s", "end_s")


class Manifest(SourceFormat):
    name = "manifest"
    required_columns = ()

    def required(self, cfg: SourcesConfig) -> tuple[str, ...]:
        return (cfg.manifest_path_column,)

    def parse(self, record: dict[str, Any], cfg: SourcesConfig) -> SourceRow:
        path = text(record.get(cfg.manifest_path_column)).strip()
        if not path:
            raise RowError(f"column {cfg.manifest_path_column!r} is empty")
        window = None
        if not all(is_missing(record.get(c)) for c in WINDOW_COLUMNS):
            start, end = (optional_number(record, c) for c in WINDOW_COLUMNS)
            if start is None or end is None:
                raise RowError("start_s/end_s must both be numbers when either is given")
            window = checked_window(start, end, "start_s/end_s")
        known = {cfg.manifest_path_column, cfg.manifest_caption_column, "id", *WINDOW_COLUMNS}
        scores, tags = {}, {}
        for column, value in record.items():
            if column in known or column.startswith("__") or is_missing(value):
                continue
            name = column[: -len("_score")] if column.endswith("_score") else column
            number = optional_number(record, column) if (column in SCORE_NAMES or column.endswith("_score")) else None
            if number is not None:
                scores[name] = number
            else:
                tags[column] = text(value)
        return SourceRow(
            source_id=text(record.get("id")).strip() or path,
            video=path,
            window=window,
            caption=text(record.get(cfg.manifest_caption_column)),
            scores=scores,
            tags=tags,
        )
