"""Typed config of the ingest stage (the ``ingest:`` section of a preset).

Settings split in two kinds: those that decide which clips are accepted and
what bytes a shard holds (filters, sources, cut, captions, sharding) and
therefore the shard contents, and execution settings (batch sizes, threads,
timeouts) that only change how fast the same shards are produced.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pyratok.core.config import StrictModel

SourceName = Literal["droplet", "openvid", "ultravideo", "manifest"]

DEFAULT_ASPECT_BUCKETS: tuple[str, ...] = ("1:1", "4:3", "3:2", "16:9", "2:1")
"""PyraTok's training buckets; either orientation matches (9:16 is 16:9 portrait)."""


class InputSpec(StrictModel):
    """One raw dataset to ingest: its source format, metadata table and video location."""

    source: SourceName
    metadata: str
    """Metadata table (CSV / JSONL / JSON / parquet; local path or ``s3://`` URI)."""
    videos: str
    """Folder or ``s3://`` prefix the metadata's video paths are relative to."""


class FilterConfig(StrictModel):
    """Acceptance rules; each failing rule rejects the input with its own reason code."""

    min_short_side: int = Field(720, ge=1)
    """"≥720p" = the short side of the (rotation-corrected) frame is at least this many pixels."""
    min_duration_s: float = Field(2.0, ge=0)
    max_duration_s: float = Field(600.0, gt=0)
    """Bounds on the clip's duration (the source window when the metadata defines one)."""
    min_fps: float = Field(10.0, ge=0)
    max_fps: float = Field(120.0, gt=0)
    aspect_buckets: list[str] = Field(default_factory=lambda: list(DEFAULT_ASPECT_BUCKETS))
    """``W:H`` ratios; a clip passes when its long/short ratio is within ``aspect_tolerance`` of one."""
    aspect_tolerance: float = Field(0.05, ge=0)
    """Relative tolerance (0.05 = ±5 %) around each bucket's ratio. Empty bucket list = no aspect filter."""
    min_scores: dict[str, float] = Field(default_factory=dict)
    """Thresholds on normalized source scores (aesthetic, motion, quality, temporal_consistency, vtss,
    clip, ...). A clip whose source gives the score and falls below is rejected; a missing score passes."""

    @field_validator("aspect_buckets")
    @classmethod
    def _ratios_parse(cls, buckets: list[str]) -> list[str]:
        for text in buckets:
            parts = text.split(":")
            if len(parts) != 2 or not all(p.strip().replace(".", "", 1).isdigit() and float(p) > 0 for p in parts):
                raise ValueError(f"aspect bucket {text!r} must look like W:H with positive numbers, e.g. 16:9")
        return buckets

    @model_validator(mode="after")
    def _ranges(self) -> "FilterConfig":
        if self.min_duration_s > self.max_duration_s:
            raise ValueError(f"filters.min_duration_s ({self.min_duration_s}) > filters.max_duration_s ({self.max_duration_s})")
        if self.min_fps > self.max_fps:
            raise ValueError(f"filters.min_fps ({self.min_fps}) > filters.max_fps ({self.max_fps})")
        return self


class CaptionTextConfig(StrictModel):
    """What happens to source captions that are not clean UTF-8 text or are too long."""

    max_chars: int = Field(4000, ge=1)
    too_long: Literal["truncate", "reject"] = "truncate"
    invalid_utf8: Literal["replace", "reject"] = "replace"
    """``replace``: undecodable bytes become U+FFFD and the clip is kept (captions are recaptioned later)."""


class SourcesConfig(StrictModel):
    """Per-source reading options (the column names themselves are fixed by each source's format)."""

    droplet_caption_column: str = "caption"
    """DropletVideo releases ship captions under varying names; pick the column here."""
    ultravideo_caption_field: str = "Summarized Description"
    """Which of UltraVideo's ten caption fields becomes ``caption`` (all ten go to ``captions``)."""
    ultravideo_video_file: str = "{video_id}.mp4"
    """Video file of an UltraVideo row, relative to ``videos``; fields: ``{video_id}`` (from ``url``), ``{clip_id}``."""
    manifest_path_column: str = "path"
    manifest_caption_column: str = "caption"


class CutConfig(StrictModel):
    """How the clip window is taken out of a source video (never decoding frames unless re-encoding)."""

    mode: Literal["auto", "copy", "reencode"] = "auto"
    """``auto``: stream copy when the window starts on a keyframe, else re-encode; ``copy``: always stream copy
    (the window snaps back to the keyframe before its start); ``reencode``: always re-encode to h264."""
    keyframe_tolerance_s: float = Field(0.05, ge=0)
    """A keyframe this close to the window start counts as "on" it for a stream copy."""
    precut_tolerance_s: float = Field(0.5, ge=0)
    """A windowed row whose file already lasts the window length (±this) is taken as the pre-cut clip."""
    window_end_tolerance_s: float = Field(0.1, ge=0)
    """How far a window may run past the end of the video before the row is rejected."""
    store_codecs: list[str] = Field(default_factory=lambda: ["h264", "hevc", "vp9", "av1"])
    """Codecs stored as-is (in mp4); anything else is re-encoded to h264."""
    keep_audio: bool = False
    """Keep the first audio stream when remuxing/cutting (whole-file copies keep the original bytes)."""
    crf: int = Field(18, ge=0, le=51)
    preset: str = "veryfast"
    faststart: bool = True
    """Move the moov atom to the front of cut/remuxed clips, so readers can stream them."""


class ShardConfig(StrictModel):
    """Grouping of accepted clips (sorted by key) into shards; part of the shard contents."""

    max_samples: int = Field(256, ge=1)
    max_mb: float = Field(1024.0, gt=0)
    """Estimated bytes per shard (probed size, scaled to the window); a clip larger than this gets its own shard."""


class SplitConfig(StrictModel):
    """The held-out split: each accepted clip is ``train`` or ``val`` by a stable hash of its key."""

    val_fraction: float = Field(0.0, ge=0, lt=1)
    """Share of clips held out as ``val`` (recorded in each sample's json and the manifest; training skips them)."""


class IntegrityConfig(StrictModel):
    """End-to-end checks that keep truncated and corrupt files out of the shards (``integrity.py``)."""

    check_index: bool = True
    """Probe stage: every box and sample an mp4's index points at lies inside the file (reads headers + moov)."""
    decode_ends: bool = True
    """Shard stage: decode each stored clip's first frames and last GOP (not the whole file)."""
    head_frames: int = Field(2, ge=1)
    """Frames decoded from the start of each stored clip (the window's first frames for cut clips)."""


class DedupConfig(StrictModel):
    """Exact duplicates: the same bytes (sha256 of the source file + the clip window) are kept once."""

    content: bool = True
    """Hash each source file in the probe stage; copies become ``duplicate`` rejects naming the kept key
    (the smallest key of the group, so the result does not depend on which copy is met first)."""


class ExecutionConfig(StrictModel):
    """How fast (not what): task sizes, threads and timeouts of the Ray Data job."""

    probe_batch_size: int = Field(16, ge=1)
    """Rows per probe task."""
    probe_threads: int = Field(4, ge=1)
    """ffprobe subprocesses in flight per probe task (hides S3 latency)."""
    probe_num_cpus: float = Field(1.0, gt=0)
    cut_threads: int = Field(2, ge=1)
    """Clips cut/copied in parallel inside one shard task."""
    shard_num_cpus: float = Field(1.0, gt=0)
    probe_timeout_s: float = Field(60.0, gt=0)
    """ffprobe is killed after this; the input is rejected with ``probe_timeout``."""
    cut_timeout_s: float = Field(600.0, gt=0)
    """ffmpeg (remux/cut/re-encode) is killed after this; the clip is rejected with ``cut_timeout``."""
    network_timeout_s: float = Field(30.0, gt=0)
    """ffmpeg's I/O timeout on presigned S3 URLs (a stalled read fails instead of hanging)."""
    presign_expiry_s: int = Field(6 * 3600, ge=60)


class IngestConfig(StrictModel):
    """The ingest stage: raw video datasets to filtered WebDataset shards on Ray Data."""

    inputs: list[InputSpec] = Field(default_factory=list)
    """Datasets ingested by one run into one output (the CLI's --source/--metadata/--videos adds one)."""
    output: str | None = None
    """Dataset root (folder or ``s3://`` prefix). None: ``<work_dir>/dataset``."""
    filters: FilterConfig = Field(default_factory=FilterConfig)
    captions: CaptionTextConfig = Field(default_factory=CaptionTextConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    cut: CutConfig = Field(default_factory=CutConfig)
    shards: ShardConfig = Field(default_factory=ShardConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    integrity: IntegrityConfig = Field(default_factory=IntegrityConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    allow_paths_outside_root: bool = False
    """Metadata paths must resolve (after ``..`` and symlinks) inside the input's ``videos`` root; an
    absolute path, a full URI or a path that escapes is an ``outside_root`` reject unless this is on.
    A manifest is untrusted input on a shared cluster."""
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
