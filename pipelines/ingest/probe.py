"""ffprobe a video (container + first video stream) without decoding any frame.

Targets are local paths or HTTP(S) URLs (presigned S3 URLs), so a 4K/8K
object is range-read for its header instead of downloaded. ``ffmpeg.probe``
(ffmpeg-python) builds the same command line but has no timeout, and one
hung ffprobe would stall a worker forever; we run it through
:func:`run_command` instead.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass

from pyratok.pipelines.ingest import reasons
from pyratok.pipelines.ingest.process import CommandTimeout, run_command
from pyratok.pipelines.ingest.reasons import RejectError


class ProbeError(RejectError):
    """ffprobe could not use the input (reason: a reject code)."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    """Display width (after rotation metadata is applied)."""
    height: int
    fps: float
    num_frames: int
    duration_s: float
    codec: str
    pix_fmt: str
    format_name: str
    major_brand: str
    size_bytes: int
    bit_rate: int
    rotation: int
    has_audio: bool

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def is_mp4(self) -> bool:
        """ISO-BMFF mp4 (not a QuickTime .mov, which shares ffmpeg's demuxer but not the brand)."""
        return self.format_name.startswith("mov,mp4") and self.major_brand.strip() not in ("qt", "")


def _rate(text: str | None) -> float:
    """``"30000/1001"`` -> 29.97; ``"0/0"``/missing -> 0."""
    if not text:
        return 0.0
    num, _, den = str(text).partition("/")
    try:
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def _float(value, default: float = 0.0) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(_float(side["rotation"])) % 360
    return int(_float((stream.get("tags") or {}).get("rotate"))) % 360


@functools.lru_cache(maxsize=1)
def decodable_codecs() -> frozenset[str]:
    """Codec names this ffmpeg build can decode (``ffmpeg -codecs``, flag D)."""
    result = run_command(["ffmpeg", "-hide_banner", "-codecs"], timeout_s=30)
    names = set()
    for line in result.stdout.decode("utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] == "D" and parts[0][2] == "V":
            names.add(parts[1])
    return frozenset(names)


def parse_probe(data: dict) -> VideoInfo:
    """ffprobe's ``-show_format -show_streams`` JSON -> :class:`VideoInfo` (first video stream)."""
    streams = data.get("streams") or []
    fmt = data.get("format") or {}
    video = next(
        (s for s in streams if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")),
        None,
    )
    if video is None:
        kinds = sorted({s.get("codec_type", "?") for s in streams}) or ["none"]
        raise ProbeError(reasons.NO_VIDEO_STREAM, f"no video stream (streams: {', '.join(kinds)})")
    codec = video.get("codec_name") or ""
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if not codec or width <= 0 or height <= 0:
        raise ProbeError(reasons.UNDECODABLE, f"video stream without codec or size (codec={codec or '?'}, {width}x{height})")
    rotation = _rotation(video)
    if rotation in (90, 270):
        width, height = height, width
    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    duration = _float(video.get("duration")) or _float(fmt.get("duration"))
    frames = int(_float(video.get("nb_frames"))) or int(round(duration * fps))
    return VideoInfo(
        width=width,
        height=height,
        fps=round(fps, 6),
        num_frames=frames,
        duration_s=round(duration, 6),
        codec=codec,
        pix_fmt=video.get("pix_fmt") or "",
        format_name=fmt.get("format_name") or "",
        major_brand=((fmt.get("tags") or {}).get("major_brand") or ""),
        size_bytes=int(_float(fmt.get("size"))),
        bit_rate=int(_float(fmt.get("bit_rate")) or _float(video.get("bit_rate"))),
        rotation=rotation,
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
    )


def _network_args(target: str, network_timeout_s: float | None) -> list[str]:
    from pyratok.pipelines.ingest.video_access import http_input_options

    return [arg for key, value in http_input_options(target, network_timeout_s).items() for arg in (f"-{key}", value)]


def probe(target: str, *, timeout_s: float, network_timeout_s: float | None = None) -> VideoInfo:
    """Probe a local path or URL; raise :class:`ProbeError` with a reject reason when it is unusable."""
    args = ["ffprobe", "-v", "error", *_network_args(target, network_timeout_s)]
    args += ["-show_format", "-show_streams", "-of", "json", target]
    try:
        result = run_command(args, timeout_s)
    except CommandTimeout as exc:
        raise ProbeError(reasons.PROBE_TIMEOUT, str(exc)) from None
    if result.returncode != 0:
        raise ProbeError(reasons.PROBE_FAILED, f"ffprobe: {result.error_tail()}")
    try:
        data = json.loads(result.stdout.decode("utf-8", errors="replace"))
    except json.JSONDecodeError as exc:
        raise ProbeError(reasons.PROBE_FAILED, f"ffprobe printed no JSON: {exc}") from None
    info = parse_probe(data)
    if info.codec not in decodable_codecs():
        raise ProbeError(reasons.UNDECODABLE, f"codec {info.codec!r} has no decoder in this ffmpeg build")
    return info


def keyframes_near(
    target: str, at_s: float, tolerance_s: float, *, timeout_s: float, network_timeout_s: float | None = None
) -> list[float]:
    """Keyframe timestamps within ``at_s ± tolerance_s``, reading only the packets around it (no decode)."""
    lo, hi = max(0.0, at_s - tolerance_s), at_s + tolerance_s + 1e-3
    args = ["ffprobe", "-v", "error", *_network_args(target, network_timeout_s), "-select_streams", "v:0"]
    args += ["-show_entries", "packet=pts_time,flags", "-read_intervals", f"{lo:.6f}%{hi:.6f}", "-of", "json", target]
    try:
        result = run_command(args, timeout_s)
    except CommandTimeout as exc:
        raise ProbeError(reasons.PROBE_TIMEOUT, f"keyframe scan: {exc}") from None
    if result.returncode != 0:
        raise ProbeError(reasons.PROBE_FAILED, f"ffprobe keyframe scan: {result.error_tail()}")
    packets = json.loads(result.stdout or b"{}").get("packets", [])
    return sorted(
        t
        for p in packets
        if "K" in (p.get("flags") or "") and (t := _float(p.get("pts_time"), -1.0)) >= 0 and lo - 1e-6 <= t <= hi
    )


def count_decoded_frames(path: str, *, timeout_s: float) -> int:
    """Frames a decoder actually outputs (decodes the clip: used only on short stream-copied clips).

    A stream copy that starts on an open-GOP keyframe (HEVC CRA) carries leading
    pictures no decoder can show, and B-frame reordering drags a few extra packets
    past the window end; the container's packet count over-reports both.
    """
    args = ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0"]
    args += ["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", path]
    try:
        result = run_command(args, timeout_s)
    except CommandTimeout as exc:
        raise ProbeError(reasons.PROBE_TIMEOUT, f"frame count: {exc}") from None
    text = result.stdout.decode("utf-8", errors="replace").strip().split(",")[0]
    if result.returncode != 0 or not text.isdigit():
        raise ProbeError(reasons.PROBE_FAILED, f"frame count: {result.error_tail()}")
    return int(text)
