"""UltraVideo: ``clip_id, url, frame_width, frame_height, fps, start_frame, end_frame,
total_frames, start_time, end_time, duration, vtss_score, motion_score, video_clip_score``
plus ten caption fields. Each row is a window of a source video (``{video_id}.mp4`` by
default, the id taken from ``url``); the window is cut out at ingest."""

from __future__ import annotations

from typing import Any

from pyratok.pipelines.ingest.config import SourcesConfig
from pyratok.pipelines.ingest.sources.base import (
    RowError,
    SourceFormat,
    SourceRow,
    checked_window,
    number,
    optional_number,
    scores_from,
    text,
    video_id_from_url,
)

CAPTION_FIELDS: tuple[str, ...] = (
    "Brief Description", "Detailed Description", "Background", "Theme Description", "Style",
    "Shot Type", "Camera Movement", "Lighting", "Video Atmosphere", "Summarized Description",
)  # fmt: skip

SCORE_COLUMNS = {"vtss_score": "vtss", "motion_score": "motion", "video_clip_score": "clip"}


def ultravideo_window(record: dict[str, Any]) -> tuple[float, float]:
    """Seconds from ``start_time``/``end_time``; frames over ``fps`` when the times are missing."""
    start, end = optional_number(record, "start_time"), optional_number(record, "end_time")
    if start is None or end is None:
        fps = number(record, "fps")
        if fps <= 0:
            raise RowError(f"column 'fps' = {fps:g} must be positive")
        start, end = number(record, "start_frame") / fps, number(record, "end_frame") / fps
    return checked_window(start, end, "start/end")


class UltraVideo(SourceFormat):
    name = "ultravideo"
    required_columns = ("clip_id", "url", "fps", "start_frame", "end_frame", "start_time", "end_time")

    def required(self, cfg: SourcesConfig) -> tuple[str, ...]:
        return (*self.required_columns, cfg.ultravideo_caption_field)

    def parse(self, record: dict[str, Any], cfg: SourcesConfig) -> SourceRow:
        clip_id = text(record.get("clip_id")).strip()
        if not clip_id:
            raise RowError("column 'clip_id' is empty")
        video_id = video_id_from_url(text(record.get("url")) or clip_id)
        try:
            video = cfg.ultravideo_video_file.format(video_id=video_id, clip_id=clip_id)
        except (KeyError, IndexError) as exc:
            raise RowError(f"sources.ultravideo_video_file has an unknown field {exc}") from None
        captions = {name: text(record.get(name)) for name in CAPTION_FIELDS if text(record.get(name))}
        return SourceRow(
            source_id=clip_id,
            video=video,
            window=ultravideo_window(record),
            caption=text(record.get(cfg.ultravideo_caption_field)),
            captions=captions,
            scores=scores_from(record, SCORE_COLUMNS),
            tags={"video_id": video_id},
        )
