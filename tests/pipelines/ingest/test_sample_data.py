"""The generated corpus uses each source's exact layout and column names (design section 3)."""

import csv
import json

import pandas as pd
import pytest

from pyratok.core.storage import Storage
from pyratok.pipelines.ingest.probe import probe
from pyratok.pipelines.ingest.sample_data import INPUTS_FILE, load_inputs_file
from pyratok.pipelines.ingest.sources.ultravideo import CAPTION_FIELDS

pytestmark = pytest.mark.integration


def header(path):
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return next(csv.reader(fh))


def test_metadata_tables_use_the_exact_source_columns(sample_corpus):
    assert header(sample_corpus / "openvid/OpenVid-1M.csv") == [
        "video", "caption", "aesthetic score", "motion score", "temporal consistency score", "camera motion",
        "frame", "fps", "seconds",
    ]  # fmt: skip
    assert header(sample_corpus / "ultravideo/UltraVideo.csv") == [
        "clip_id", "url", "frame_width", "frame_height", "fps", "start_frame", "end_frame", "total_frames",
        "start_time", "end_time", "duration", "vtss_score", "motion_score", "video_clip_score", *CAPTION_FIELDS,
    ]  # fmt: skip
    assert header(sample_corpus / "droplet/DropletVideo-10M.csv")[:3] == ["url", "fps", "framestamp"]
    assert header(sample_corpus / "manifest/manifest.csv")[:2] == ["path", "caption"]
    assert list(pd.read_parquet(sample_corpus / "manifest/manifest.parquet").columns)[:2] == ["path", "caption"]
    jsonl = [json.loads(line) for line in (sample_corpus / "manifest/manifest.jsonl").read_text().splitlines()]
    assert [r["path"] for r in jsonl] == list(pd.read_csv(sample_corpus / "manifest/manifest.csv")["path"])


def test_droplet_files_are_named_by_ytid_window_and_quality(sample_corpus):
    names = sorted(p.name for p in (sample_corpus / "droplet/videos").iterdir())
    assert "dr0000000a1--000000_000048-720p.mp4" in names
    assert all(n.count("--") == 1 and n.rsplit("-", 1)[1] in ("480p.mp4", "720p.mp4", "1080p.mp4") for n in names)


def test_mixed_resolutions_codecs_and_bad_inputs(sample_corpus):
    infos = {}
    for path in sorted(sample_corpus.rglob("*")):
        if path.suffix in (".mp4", ".mov", ".webm", ".avi") and path.stat().st_size > 0:
            try:
                infos[path.name] = probe(str(path), timeout_s=30)
            except Exception:  # noqa: BLE001 - the deliberately broken files
                continue
    sizes = {(i.width, i.height) for i in infos.values()}
    assert {(854, 480), (1280, 720), (1920, 1080), (3840, 2160), (720, 1280)} <= sizes
    assert sum(s == (3840, 2160) for s in (( i.width, i.height) for i in infos.values())) == 1
    assert {"h264", "hevc", "vp9"} <= {i.codec for i in infos.values()}
    assert len({round(i.duration_s, 2) for i in infos.values()}) >= 4
    videos = sample_corpus / "openvid/videos"
    assert (videos / "ov_zero.mp4").stat().st_size == 0
    assert not (videos / "ov_missing.mp4").exists()
    raw = (sample_corpus / "openvid/OpenVid-1M.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # one caption is not UTF-8
    assert b'""neon""' in raw and b"rain,\nand" in raw  # quotes, commas and a newline inside a caption
    assert b"(12;abc)" in (sample_corpus / "droplet/DropletVideo-10M.csv").read_bytes()


def test_inputs_file_resolves_relative_to_the_corpus(sample_corpus):
    inputs = load_inputs_file(str(sample_corpus / INPUTS_FILE), Storage())
    assert [i["source"] for i in inputs] == ["openvid", "ultravideo", "droplet", "manifest"]
    assert all((sample_corpus / i["metadata"]).exists() and i["metadata"].startswith(str(sample_corpus)) for i in inputs)
