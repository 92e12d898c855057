"""Take the clip out of its source: decide how (plan), then do it with one ffmpeg call.

Cheapest first: a whole mp4 in a stored codec is kept byte for byte; another
container is remuxed; a window that starts on a keyframe is stream-copied; only
a window between keyframes (or a codec we do not store) is re-encoded to h264.
Planning reads ffprobe output and a few packets' flags, never a decoded frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

from pyratok.pipelines.ingest import reasons
from pyratok.pipelines.ingest.config import CutConfig
from pyratok.pipelines.ingest.probe import VideoInfo
from pyratok.pipelines.ingest.process import CommandTimeout, run_command
from pyratok.pipelines.ingest.reasons import RejectError, Rejection

CutMode = Literal["whole", "remux", "copy", "reencode"]


class CutError(RejectError):
    """ffmpeg could not produce the clip (reason: cut_failed / cut_timeout)."""


@dataclass(frozen=True)
class ClipPlan:
    mode: CutMode
    start_s: float
    """Read from here in the source file (0 for whole files)."""
    end_s: float
    clip_start_s: float
    """The clip's window in the source video's timeline (metadata; a pre-cut file keeps its window)."""
    clip_end_s: float

    @property
    def duration_s(self) -> float:
        return round(self.end_s - self.start_s, 6)

    def to_dict(self) -> dict:
        return asdict(self)


def _whole(info: VideoInfo, cfg: CutConfig, clip_start: float = 0.0, clip_end: float | None = None) -> ClipPlan:
    if info.codec not in cfg.store_codecs or cfg.mode == "reencode":
        mode: CutMode = "reencode"
    elif info.is_mp4:
        mode = "whole"
    else:
        mode = "remux"
    end = clip_end if clip_end is not None else info.duration_s
    return ClipPlan(mode, 0.0, info.duration_s, clip_start, end)


def plan_clip(
    info: VideoInfo,
    window: tuple[float, float] | None,
    cfg: CutConfig,
    keyframes_near: Callable[[float, float], list[float]],
) -> ClipPlan | Rejection:
    """How to produce the clip; ``keyframes_near(t, tol)`` lists keyframe times around ``t``."""
    if window is None:
        return _whole(info, cfg)
    start, end = window
    length = end - start
    if end > info.duration_s + cfg.window_end_tolerance_s:
        if abs(info.duration_s - length) <= cfg.precut_tolerance_s:
            # The file already is the clip (e.g. DropletVideo's per-clip files named by their window).
            return _whole(info, cfg, start, end)
        return Rejection(
            reasons.WINDOW_OUT_OF_RANGE,
            f"window {start:.3f}-{end:.3f} s runs past the end of the {info.duration_s:.3f} s video",
        )
    end = min(end, info.duration_s)
    if start <= cfg.window_end_tolerance_s and end >= info.duration_s - cfg.window_end_tolerance_s:
        return _whole(info, cfg, start, end)
    if cfg.mode == "reencode" or info.codec not in cfg.store_codecs:
        return ClipPlan("reencode", start, end, start, end)
    if cfg.mode == "copy":
        return ClipPlan("copy", start, end, start, end)
    keyframes = keyframes_near(start, cfg.keyframe_tolerance_s) if start > 0 else [0.0]
    if keyframes:
        key = min(keyframes, key=lambda t: abs(t - start))
        return ClipPlan("copy", key, end, key, end)
    return ClipPlan("reencode", start, end, start, end)


def ffmpeg_args(
    source: str, dest: str | Path, plan: ClipPlan, info: VideoInfo, cfg: CutConfig, network_timeout_s: float | None
) -> list[str]:
    """The ffmpeg command line (built with ffmpeg-python) that writes ``plan``'s clip to ``dest`` as mp4."""
    import ffmpeg

    from pyratok.pipelines.ingest.video_access import http_input_options

    in_opts: dict = {}
    in_opts.update(http_input_options(source, network_timeout_s))  # I/O timeout + reconnects for S3 URLs
    if plan.mode in ("copy", "reencode") and (plan.start_s > 0 or plan.end_s < info.duration_s):
        in_opts.update(ss=f"{plan.start_s:.6f}", t=f"{plan.duration_s:.6f}")
    stream = ffmpeg.input(source, **in_opts)
    streams = [stream["v:0"]]
    out_opts: dict = {"map_metadata": -1, "fflags": "+bitexact", "flags:v": "+bitexact", "f": "mp4"}
    if cfg.keep_audio:
        streams.append(stream["a:0?"])
    else:
        out_opts["an"] = None
    if cfg.faststart:
        out_opts["movflags"] = "+faststart"
    if plan.mode == "reencode":
        out_opts.update(vcodec="libx264", preset=cfg.preset, crf=cfg.crf, pix_fmt="yuv420p")
        if info.width % 2 or info.height % 2:  # yuv420p needs even sizes
            out_opts["vf"] = "scale=trunc(iw/2)*2:trunc(ih/2)*2"
        if cfg.keep_audio:
            out_opts["acodec"] = "aac"
    else:
        out_opts.update(c="copy", avoid_negative_ts="make_zero")
    args = ffmpeg.compile(ffmpeg.output(*streams, str(dest), **out_opts), overwrite_output=True)
    # Global options go first: after the output name ffmpeg ignores them ("trailing options").
    return [args[0], "-nostdin", "-hide_banner", "-loglevel", "error", *args[1:]]


def make_clip(
    source: str,
    dest: str | Path,
    plan: ClipPlan,
    info: VideoInfo,
    cfg: CutConfig,
    *,
    timeout_s: float,
    network_timeout_s: float | None = None,
) -> None:
    """Write the clip to ``dest`` (remux / stream copy / re-encode); :class:`CutError` on failure."""
    args = ffmpeg_args(source, dest, plan, info, cfg, network_timeout_s)
    try:
        result = run_command(args, timeout_s)
    except CommandTimeout as exc:
        raise CutError(reasons.CUT_TIMEOUT, f"{plan.mode}: {exc}") from None
    if result.returncode != 0:
        raise CutError(reasons.CUT_FAILED, f"ffmpeg {plan.mode}: {result.error_tail()}")
    if not Path(dest).exists() or Path(dest).stat().st_size == 0:
        raise CutError(reasons.CUT_FAILED, f"ffmpeg {plan.mode} wrote no data")
