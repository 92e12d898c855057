"""OpenVid-1M: ``video, caption, aesthetic score, motion score, temporal consistency score,
camera motion, frame, fps, seconds``. Whole files (no window); no width/height, so
resolution comes from the probe."""

from __future__ import annotations

from typing import Any

from pyratok.pipelines.ingest.config import SourcesConfig
from pyratok.pipelines.ingest.sources.base import RowError, SourceFormat, SourceRow, scores_from, text

SCORE_COLUMNS = {
    "aesthetic score": "aesthetic",
    "motion score": "motion",
    "temporal consistency score": "temporal_consistency",
}


class OpenVid(SourceFormat):
    name = "openvid"
    required_columns = ("video", "caption")

    def parse(self, record: dict[str, Any], cfg: SourcesConfig) -> SourceRow:
        video = text(record.get("video")).strip()
        if not video:
            raise RowError("column 'video' is empty")
        tags = {"camera_motion": text(record.get("camera motion"))} if text(record.get("camera motion")) else {}
        return SourceRow(
            source_id=video,
            video=video,
            caption=text(record.get("caption")),
            scores=scores_from(record, SCORE_COLUMNS),
            tags=tags,
        )
