"""A small, realistic raw-video corpus in each source's on-disk layout, made with ffmpeg.

``pyratok sample-data OUT`` writes::

    inputs.yaml                         the four datasets, ready for ``pyratok ingest --inputs``
    expected.json                       what ingest should do with every metadata row (default filters)
    openvid/OpenVid-1M.csv + videos/    OpenVid-1M columns (spaces in names, no width/height)
    ultravideo/UltraVideo.csv + videos/ UltraVideo columns + ten caption fields; rows are windows of source videos
    droplet/DropletVideo-10M.csv + videos/{ytid}--{start:06d}_{end:06d}-{quality}.mp4
    manifest/manifest.{csv,jsonl,parquet} + videos/   generic ``path, caption`` (+ optional columns)

Mixed resolutions (480p, 720p, 1080p, one 2160p, one portrait 720x1280), codecs
(h264, hevc, vp9, mpeg4), containers (mp4, mov, webm, avi), durations and GOPs, plus the
bad inputs an ingest must survive: a zero-byte file, a truncated mp4, a text file named
.mp4, an audio-only .mp4, a missing file, a malformed framestamp, a duplicate row,
non-UTF-8 / very long captions and a caption with commas, quotes and newlines.
Clips are tiny (<= 4 s, low bitrate) so the whole corpus takes seconds on 2 cores;
``clips=N`` adds N plain accepted OpenVid clips for benchmarks.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyratok.core.storage import Storage, is_s3, join
from pyratok.pipelines.ingest import reasons
from pyratok.pipelines.ingest.process import run_command
from pyratok.pipelines.ingest.sources.ultravideo import CAPTION_FIELDS

INPUTS_FILE = "inputs.yaml"
EXPECTED_FILE = "expected.json"
ACCEPTED = "accepted"
ENCODE_TIMEOUT_S = 300
SAMPLE_FILTER_OVERRIDES = {"min_duration_s": 1.0, "min_scores": {"aesthetic": 4.0}}
"""The filters ``expected.json`` assumes (those of ``configs/local.yaml``)."""

OPENVID_COLUMNS = [
    "video", "caption", "aesthetic score", "motion score", "temporal consistency score",
    "camera motion", "frame", "fps", "seconds",
]  # fmt: skip
ULTRAVIDEO_COLUMNS = [
    "clip_id", "url", "frame_width", "frame_height", "fps", "start_frame", "end_frame", "total_frames",
    "start_time", "end_time", "duration", "vtss_score", "motion_score", "video_clip_score", *CAPTION_FIELDS,
]  # fmt: skip
DROPLET_COLUMNS = ["url", "fps", "framestamp", "quality_score", "caption"]
MANIFEST_COLUMNS = ["path", "caption", "id", "start_s", "end_s", "aesthetic", "license"]

NON_UTF8_CAPTION = "A caf\udce9 terrace by the sea, gulls in the wind"
"""Written as latin-1 bytes (0xE9) inside a UTF-8 CSV: the surrogate marks the invalid byte."""
LONG_CAPTION = ("A very long caption that keeps describing the same slow pan across the valley. " * 130).strip()
TRICKY_CAPTION = 'A city street at night, with "neon" signs, rain,\nand reflections; the camera tracks left, slowly'


@dataclass(frozen=True)
class VideoSpec:
    """One generated file: a test pattern encoded with the given codec/container."""

    path: str
    width: int
    height: int
    fps: float = 24.0
    seconds: float = 2.0
    codec: str = "h264"  # h264 | hevc | vp9 | mpeg4 | aac (audio only)
    gop: int = 12
    pattern: str = "testsrc2"
    hue: float = 0.0

    def ffmpeg_args(self, dest: Path) -> list[str]:
        import ffmpeg

        if self.codec == "aac":
            stream = ffmpeg.input(f"sine=frequency=440:duration={self.seconds}", f="lavfi")
            args = ffmpeg.compile(ffmpeg.output(stream, str(dest), acodec="aac", audio_bitrate="64k"), overwrite_output=True)
            return [args[0], "-nostdin", "-loglevel", "error", *args[1:]]
        # Draw the pattern at <= 960 px wide and scale up: 4K test patterns are slow to draw, not to encode.
        scale = max(1, -(-max(self.width, self.height) // 960))
        src_w, src_h = _even(self.width // scale), _even(self.height // scale)
        stream = ffmpeg.input(f"{self.pattern}=s={src_w}x{src_h}:r={self.fps}:d={self.seconds}", f="lavfi")
        if self.hue:
            stream = stream.filter("hue", h=self.hue)
        if (src_w, src_h) != (self.width, self.height):
            stream = stream.filter("scale", self.width, self.height, flags="neighbor")
        opts: dict[str, Any] = {"pix_fmt": "yuv420p", "g": self.gop}
        if self.codec == "h264":
            opts.update(vcodec="libx264", preset="ultrafast", crf=40, sc_threshold=0)
        elif self.codec == "hevc":
            opts.update(vcodec="libx265", preset="ultrafast", crf=40,
                        **{"x265-params": f"log-level=error:keyint={self.gop}:min-keyint={self.gop}:scenecut=0"})  # fmt: skip
        elif self.codec == "vp9":
            opts.update(vcodec="libvpx-vp9", deadline="realtime", **{"cpu-used": 8}, video_bitrate="150k")
        elif self.codec == "mpeg4":
            opts.update(vcodec="mpeg4", qscale=12)
        else:
            raise ValueError(f"unknown sample codec {self.codec!r}")
        args = ffmpeg.compile(ffmpeg.output(stream, str(dest), **opts), overwrite_output=True)
        return [args[0], "-nostdin", "-loglevel", "error", *args[1:]]


def _even(n: int) -> int:
    return max(2, n - n % 2)


@dataclass
class Corpus:
    videos: list[VideoSpec] = field(default_factory=list)
    special: dict[str, str] = field(default_factory=dict)
    """path -> ``zero`` | ``text`` | ``truncate:<source path>`` (made after the videos)."""
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    expected: list[dict[str, Any]] = field(default_factory=list)

    def row(self, source: str, record: dict[str, Any], source_id: str, expect: str) -> None:
        rows = self.tables.setdefault(source, [])
        self.expected.append({"source": source, "row": len(rows), "source_id": source_id, "expect": expect})
        rows.append(record)


def _openvid(c: Corpus, clips: int) -> None:
    v = "openvid/videos/"

    def add(name, spec: VideoSpec | None, expect, caption="", aesthetic=5.2, motion=3.4, declared=(48, 24, 2.0)):
        if spec is not None:
            c.videos.append(spec)
        frames, fps, seconds = declared
        c.row("openvid", {
            "video": name, "caption": caption, "aesthetic score": aesthetic, "motion score": motion,
            "temporal consistency score": 0.97, "camera motion": "pan_left", "frame": frames, "fps": fps,
            "seconds": seconds,
        }, name, expect)  # fmt: skip

    add("ov_city_1080p.mp4", VideoSpec(v + "ov_city_1080p.mp4", 1920, 1080), ACCEPTED, TRICKY_CAPTION)
    add("ov_beach_720p.mp4", VideoSpec(v + "ov_beach_720p.mp4", 1280, 720, fps=30, hue=60), ACCEPTED, NON_UTF8_CAPTION,
        declared=(60, 30, 2.0))  # fmt: skip
    add("ov_forest_portrait.mp4", VideoSpec(v + "ov_forest_portrait.mp4", 720, 1280, hue=120), ACCEPTED, LONG_CAPTION)
    add("ov_tower_2160p.mp4", VideoSpec(v + "ov_tower_2160p.mp4", 3840, 2160, seconds=1.25), ACCEPTED,
        "A tall tower under a clear sky, shot in 4K", declared=(30, 24, 1.25))  # fmt: skip
    add("ov_room_480p.mp4", VideoSpec(v + "ov_room_480p.mp4", 854, 480), reasons.TOO_SMALL, "A small room")
    add("ov_wide_cinema.mp4", VideoSpec(v + "ov_wide_cinema.mp4", 1720, 720), reasons.ASPECT_RATIO, "Scope framing")
    add("ov_slow_720p.mp4", VideoSpec(v + "ov_slow_720p.mp4", 1280, 720, fps=6, gop=6), reasons.FPS_OUT_OF_RANGE,
        "A slideshow", declared=(12, 6, 2.0))  # fmt: skip
    add("ov_short_720p.mp4", VideoSpec(v + "ov_short_720p.mp4", 1280, 720, seconds=0.5), reasons.DURATION_OUT_OF_RANGE,
        "A blink", declared=(12, 24, 0.5))  # fmt: skip
    add("ov_lowscore_720p.mp4", VideoSpec(v + "ov_lowscore_720p.mp4", 1280, 720, hue=200), reasons.SCORE_BELOW_THRESHOLD,
        "A blurry shot", aesthetic=2.1)  # fmt: skip
    add("ov_audio_only.mp4", VideoSpec(v + "ov_audio_only.mp4", 0, 0, codec="aac"), reasons.NO_VIDEO_STREAM, "Only sound")
    add("ov_zero.mp4", None, reasons.EMPTY_FILE, "Nothing here")
    c.special[v + "ov_zero.mp4"] = "zero"
    add("ov_truncated.mp4", None, reasons.PROBE_FAILED, "Cut off mid-download")
    c.special[v + "ov_truncated.mp4"] = f"truncate:{v}ov_city_1080p.mp4"
    add("ov_notes.mp4", None, reasons.PROBE_FAILED, "Not a video at all")
    c.special[v + "ov_notes.mp4"] = "text"
    add("ov_missing.mp4", None, reasons.MISSING_FILE, "Listed but never downloaded")
    add("ov_city_1080p.mp4", None, reasons.DUPLICATE, "The same clip listed twice")
    for i in range(clips):
        name = f"ov_bulk_{i:04d}.mp4"
        width, height = ((1920, 1080), (1280, 720), (1280, 720))[i % 3]
        spec = VideoSpec(v + name, width, height, hue=(i * 37) % 360)
        add(name, spec, ACCEPTED, f"Bulk clip {i}: a test pattern drifting, hue {(i * 37) % 360}")


def _ultravideo(c: Corpus) -> None:
    v = "ultravideo/videos/"
    c.videos.append(VideoSpec(v + "uvsrcA0001.mp4", 1920, 1080, seconds=4.0, gop=12, hue=30))
    c.videos.append(VideoSpec(v + "uvsrcB0002.mp4", 1280, 720, seconds=3.0, codec="hevc", gop=12, hue=90))

    def add(clip_id, video_id, size, start, end, expect, vtss=0.8):
        fps = 24.0
        captions = {name: f"{name} of {clip_id}: a drifting test pattern" for name in CAPTION_FIELDS}
        c.row("ultravideo", {
            "clip_id": clip_id, "url": f"https://www.youtube.com/watch?v={video_id}", "frame_width": size[0],
            "frame_height": size[1], "fps": fps, "start_frame": int(start * fps), "end_frame": int(end * fps),
            "total_frames": int((end - start) * fps), "start_time": start, "end_time": end, "duration": end - start,
            "vtss_score": vtss, "motion_score": 0.42, "video_clip_score": 0.31, **captions,
        }, clip_id, expect)  # fmt: skip

    add("uvsrcA0001_000", "uvsrcA0001", (1920, 1080), 0.5, 2.0, ACCEPTED)  # starts on a keyframe: stream copy
    add("uvsrcA0001_001", "uvsrcA0001", (1920, 1080), 2.25, 3.5, ACCEPTED)  # between keyframes: re-encode
    add("uvsrcA0001_002", "uvsrcA0001", (1920, 1080), 3.0, 9.0, reasons.WINDOW_OUT_OF_RANGE)
    add("uvsrcB0002_000", "uvsrcB0002", (1280, 720), 1.0, 2.5, ACCEPTED)  # hevc, stream copy


def _droplet(c: Corpus) -> None:
    v = "droplet/videos/"

    # Each clip its own hue: two identical files would be one clip to the exact-duplicate check.
    def add(ytid, framestamp, expect, quality_score=0.71, files=()):
        for quality, (w, h) in files:
            start, end = (int(x) for x in framestamp.strip("()").split(","))
            c.videos.append(VideoSpec(f"{v}{ytid}--{start:06d}_{end:06d}-{quality}.mp4", w, h, hue=int(ytid[-1]) * 30))
        c.row("droplet", {
            "url": f"https://www.youtube.com/watch?v={ytid}", "fps": 24, "framestamp": framestamp,
            "quality_score": quality_score, "caption": f"Droplet clip of {ytid} at {framestamp}",
        }, ytid, expect)  # fmt: skip

    add("dr0000000a1", "(0,48)", ACCEPTED, files=[("720p", (1280, 720))])
    add("dr0000000b2", "(120,168)", ACCEPTED, files=[("1080p", (1920, 1080))])  # the file is the pre-cut window
    add("dr0000000c3", "(24,72)", ACCEPTED, files=[("480p", (854, 480)), ("720p", (1280, 720))])  # picks 720p
    add("dr0000000d4", "(12;abc)", reasons.BAD_METADATA)
    add("dr0000000e5", "(0,48)", reasons.MISSING_FILE)


def _manifest(c: Corpus) -> None:
    v = "manifest/videos/"
    c.videos += [
        VideoSpec(v + "clips/vp9_720p.webm", 1280, 720, codec="vp9", hue=150),
        VideoSpec(v + "clips/studio_1080p.mov", 1920, 1080, hue=250),
        VideoSpec(v + "clips/hevc_720p.mp4", 1280, 720, codec="hevc", hue=300),
        VideoSpec(v + "clips/mpeg4_720p.avi", 1280, 720, codec="mpeg4", hue=330),
    ]

    def add(path, expect, caption, id_="", start="", end="", aesthetic=4.8):
        record = {"path": path, "caption": caption, "id": id_, "start_s": start, "end_s": end,
                  "aesthetic": aesthetic, "license": "cc-by-4.0"}  # fmt: skip
        c.row("manifest", record, id_ or path, expect)

    add("clips/vp9_720p.webm", ACCEPTED, "VP9 in WebM: remuxed to mp4")
    add("clips/studio_1080p.mov", ACCEPTED, "QuickTime h264: remuxed to mp4")
    add("clips/hevc_720p.mp4", ACCEPTED, "HEVC mp4: kept byte for byte")
    add("clips/mpeg4_720p.avi", ACCEPTED, "MPEG-4 part 2: re-encoded to h264")
    add("clips/studio_1080p.mov", ACCEPTED, "A window of the studio clip", "studio_window", 0.5, 1.5)


def build_corpus(clips: int = 0) -> Corpus:
    corpus = Corpus()
    _openvid(corpus, clips)
    _ultravideo(corpus)
    _droplet(corpus)
    _manifest(corpus)
    return corpus


# -- writing -------------------------------------------------------------------
def _encode(spec: VideoSpec, root: Path) -> None:
    dest = root / spec.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    result = run_command(spec.ffmpeg_args(dest), ENCODE_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg could not make {spec.path}: {result.error_tail()}")


def _make_special(path: str, kind: str, root: Path) -> None:
    dest = root / path
    dest.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zero":
        dest.write_bytes(b"")
    elif kind == "text":
        dest.write_text("These are my notes, not a video.\n" * 20)
    elif kind.startswith("truncate:"):
        data = (root / kind.split(":", 1)[1]).read_bytes()
        dest.write_bytes(data[: len(data) * 2 // 5])  # moov atom is at the end: gone
    else:
        raise ValueError(kind)


def _csv_bytes(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    """UTF-8 CSV, except that lone surrogates become the raw (invalid) bytes they stand for."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8", errors="surrogateescape")


def _write_tables(corpus: Corpus, root: Path) -> dict[str, str]:
    """Write each source's metadata; returns source -> metadata path (relative to root)."""
    import pandas as pd

    paths = {
        "openvid": "openvid/OpenVid-1M.csv",
        "ultravideo": "ultravideo/UltraVideo.csv",
        "droplet": "droplet/DropletVideo-10M.csv",
        "manifest": "manifest/manifest.csv",
    }
    columns = {"openvid": OPENVID_COLUMNS, "ultravideo": ULTRAVIDEO_COLUMNS, "droplet": DROPLET_COLUMNS,
               "manifest": MANIFEST_COLUMNS}  # fmt: skip
    for source, rel in paths.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_csv_bytes(corpus.tables[source], columns[source]))
    # The generic manifest also as JSONL and parquet (same rows), the other formats users bring.
    rows = corpus.tables["manifest"]
    with open(root / "manifest/manifest.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({k: v for k, v in row.items() if v != ""}, ensure_ascii=False) + "\n")
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in ("start_s", "end_s"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame.to_parquet(root / "manifest/manifest.parquet", index=False)
    return paths


def write_sample_data(out: str, *, clips: int = 0, threads: int | None = None, storage: Storage | None = None) -> dict:
    """Generate the corpus into ``out`` (a folder or ``s3://`` prefix); returns a short summary."""
    storage = storage or Storage()
    corpus = build_corpus(clips)
    if is_s3(out):
        with tempfile.TemporaryDirectory(prefix="pyratok-sample-") as tmp:
            summary = _generate(corpus, Path(tmp), threads)
            storage.upload_dir(tmp, out)
        return {**summary, "out": out}
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    return {**_generate(corpus, root, threads), "out": str(root)}


def _generate(corpus: Corpus, root: Path, threads: int | None) -> dict:
    for sub in ("openvid", "ultravideo", "droplet", "manifest"):
        shutil.rmtree(root / sub, ignore_errors=True)
    threads = threads or max(2, os.cpu_count() or 2)
    # Longest encodes first so the pool does not end on a 4K straggler.
    order = sorted(corpus.videos, key=lambda s: -(s.width * s.height * s.seconds))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda spec: _encode(spec, root), order))
    for path, kind in corpus.special.items():
        _make_special(path, kind, root)
    tables = _write_tables(corpus, root)
    inputs = [{"source": s, "metadata": rel, "videos": f"{s}/videos"} for s, rel in tables.items()]
    (root / INPUTS_FILE).write_text(yaml.safe_dump({"inputs": inputs}, sort_keys=False))
    expected = {"filters": SAMPLE_FILTER_OVERRIDES, "rows": corpus.expected}
    (root / EXPECTED_FILE).write_text(json.dumps(expected, indent=1))
    files = [p for p in root.rglob("*") if p.is_file()]
    return {
        "videos": len(corpus.videos),
        "rows": len(corpus.expected),
        "accepted_expected": sum(r["expect"] == ACCEPTED for r in corpus.expected),
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
    }


def load_inputs_file(uri: str, storage: Storage | None = None) -> list[dict[str, str]]:
    """The ``inputs:`` list of an inputs YAML, relative paths resolved against the file's folder."""
    from pyratok.core.storage import parent

    storage = storage or Storage()
    data = yaml.safe_load(storage.read_text(uri)) or {}
    items = data.get("inputs") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ValueError(f"{uri}: expected an 'inputs:' list of {{source, metadata, videos}}")
    base = parent(uri)

    def resolve(path: str) -> str:
        if is_s3(path) or os.path.isabs(path):
            return path
        return join(base, path) if is_s3(base) else str((Path(base) / path).resolve())

    out = []
    for item in items:
        if not isinstance(item, dict) or not {"source", "metadata", "videos"} <= set(item):
            raise ValueError(f"{uri}: each input needs source, metadata and videos, got {item!r}")
        out.append({**item, "metadata": resolve(item["metadata"]), "videos": resolve(item["videos"])})
    return out
