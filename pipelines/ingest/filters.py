"""Acceptance filters. Each takes what it needs and returns ``None`` (pass) or a :class:`Rejection`.

They run on metadata and ffprobe output only: nothing here decodes a frame.
"""

from __future__ import annotations

from typing import Callable

from pyratok.pipelines.ingest import reasons
from pyratok.pipelines.ingest.config import FilterConfig
from pyratok.pipelines.ingest.probe import VideoInfo
from pyratok.pipelines.ingest.reasons import Rejection


def bucket_ratio(text: str) -> float:
    """``"16:9"`` -> 1.777..., always >= 1 (orientation does not matter)."""
    w, h = (float(p) for p in text.split(":"))
    return max(w, h) / min(w, h)


def check_scores(scores: dict[str, float], cfg: FilterConfig) -> Rejection | None:
    """Source scores below their threshold; a score the source does not give passes."""
    for name, threshold in sorted(cfg.min_scores.items()):
        value = scores.get(name)
        if value is not None and value < threshold:
            return Rejection(reasons.SCORE_BELOW_THRESHOLD, f"{name} score {value:g} < {threshold:g}")
    return None


def check_resolution(info: VideoInfo, cfg: FilterConfig) -> Rejection | None:
    if info.short_side < cfg.min_short_side:
        return Rejection(reasons.TOO_SMALL, f"{info.width}x{info.height}: short side {info.short_side} < {cfg.min_short_side}")
    return None


def check_aspect(info: VideoInfo, cfg: FilterConfig) -> Rejection | None:
    if not cfg.aspect_buckets:
        return None
    ratio = max(info.width, info.height) / min(info.width, info.height)
    for bucket in cfg.aspect_buckets:
        if abs(ratio / bucket_ratio(bucket) - 1.0) <= cfg.aspect_tolerance:
            return None
    return Rejection(
        reasons.ASPECT_RATIO,
        f"{info.width}x{info.height} (ratio {ratio:.3f}) is not within {cfg.aspect_tolerance:.0%} of "
        f"{', '.join(cfg.aspect_buckets)}",
    )


def check_fps(info: VideoInfo, cfg: FilterConfig) -> Rejection | None:
    if not (cfg.min_fps <= info.fps <= cfg.max_fps):
        return Rejection(reasons.FPS_OUT_OF_RANGE, f"{info.fps:g} fps is outside [{cfg.min_fps:g}, {cfg.max_fps:g}]")
    return None


def check_duration(duration_s: float, cfg: FilterConfig) -> Rejection | None:
    if not (cfg.min_duration_s <= duration_s <= cfg.max_duration_s):
        return Rejection(
            reasons.DURATION_OUT_OF_RANGE,
            f"clip lasts {duration_s:.3f} s, outside [{cfg.min_duration_s:g}, {cfg.max_duration_s:g}] s",
        )
    return None


STREAM_FILTERS: tuple[Callable[[VideoInfo, FilterConfig], Rejection | None], ...] = (
    check_resolution,
    check_aspect,
    check_fps,
)


def check_stream(info: VideoInfo, cfg: FilterConfig) -> Rejection | None:
    """The first failing stream filter (resolution, aspect ratio, fps), in that order."""
    for check in STREAM_FILTERS:
        rejection = check(info, cfg)
        if rejection is not None:
            return rejection
    return None
