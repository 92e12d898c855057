"""Reason codes of the rejects table: every input that is not accepted carries exactly one.

Codes are stable strings (users filter ``rejects.parquet`` by them); the
``detail`` column says what exactly was wrong with that input.
"""

from __future__ import annotations

from typing import NamedTuple

# Metadata row problems (found while parsing, before any video is touched).
BAD_METADATA = "bad_metadata"
DUPLICATE = "duplicate"
CAPTION_INVALID_UTF8 = "caption_invalid_utf8"
CAPTION_TOO_LONG = "caption_too_long"
SCORE_BELOW_THRESHOLD = "score_below_threshold"

# The video file itself.
OUTSIDE_ROOT = "outside_root"
"""The path resolves (after ``..`` and symlinks) outside its input's videos root."""
BAD_PATH = "bad_path"
"""The path holds a control character or NUL, or is longer than a file system allows."""
MISSING_FILE = "missing_file"
EMPTY_FILE = "empty_file"
PROBE_FAILED = "probe_failed"
PROBE_TIMEOUT = "probe_timeout"
NO_VIDEO_STREAM = "no_video_stream"
UNDECODABLE = "undecodable"
TRUNCATED = "truncated"
"""The file ends before what its index or stream says it holds (a cut-off download or copy)."""
CORRUPT = "corrupt"
"""The bytes are there but do not decode (garbage, zero-filled tail, malformed index)."""

# Filters on the probed stream.
TOO_SMALL = "too_small"
ASPECT_RATIO = "aspect_ratio"
FPS_OUT_OF_RANGE = "fps_out_of_range"
DURATION_OUT_OF_RANGE = "duration_out_of_range"
WINDOW_OUT_OF_RANGE = "window_out_of_range"

# Taking the clip out of the source.
CUT_FAILED = "cut_failed"
CUT_TIMEOUT = "cut_timeout"

ALL: tuple[str, ...] = (
    BAD_METADATA, DUPLICATE, CAPTION_INVALID_UTF8, CAPTION_TOO_LONG, SCORE_BELOW_THRESHOLD,
    OUTSIDE_ROOT, BAD_PATH, MISSING_FILE, EMPTY_FILE, PROBE_FAILED, PROBE_TIMEOUT, NO_VIDEO_STREAM, UNDECODABLE,
    TRUNCATED, CORRUPT,
    TOO_SMALL, ASPECT_RATIO, FPS_OUT_OF_RANGE, DURATION_OUT_OF_RANGE, WINDOW_OUT_OF_RANGE,
    CUT_FAILED, CUT_TIMEOUT,
)  # fmt: skip


class Rejection(NamedTuple):
    reason: str
    detail: str


class RejectError(Exception):
    """Raised where an input turns out unusable; carries its reject reason and what was wrong."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    @property
    def rejection(self) -> Rejection:
        return Rejection(self.reason, self.detail)
