"""Source parsers: each format's exact column names -> normalized rows; bad rows -> RowError."""

import json

import pytest

from pyratok.core.storage import Storage
from pyratok.pipelines.ingest.config import SourcesConfig
from pyratok.pipelines.ingest.sources import RowError, source_format
from pyratok.pipelines.ingest.sources.base import video_id_from_url
from pyratok.pipelines.ingest.sources.droplet import parse_framestamp
from pyratok.pipelines.ingest.sources.tables import ERROR_FIELD, MetadataError, read_table
from pyratok.pipelines.ingest.sources.ultravideo import CAPTION_FIELDS

CFG = SourcesConfig()


def parse(source: str, record: dict, cfg: SourcesConfig = CFG):
    return source_format(source).parse(record, cfg)


def test_openvid_row_maps_spaced_columns_and_has_no_window():
    row = parse("openvid", {
        "video": "celebv_abc_1.mp4", "caption": "A man, smiling", "aesthetic score": "5.13",
        "motion score": "2.5", "temporal consistency score": "0.98", "camera motion": "static",
        "frame": "96", "fps": "24.0", "seconds": "4.0",
    })  # fmt: skip
    assert row.source_id == row.video == "celebv_abc_1.mp4"
    assert row.window is None
    assert row.caption == "A man, smiling"
    assert row.scores == {"aesthetic": 5.13, "motion": 2.5, "temporal_consistency": 0.98}
    assert row.tags == {"camera_motion": "static"}


def test_openvid_requires_a_video_name():
    with pytest.raises(RowError, match="'video' is empty"):
        parse("openvid", {"video": " ", "caption": "x"})


def _ultravideo_record(**over):
    record = {
        "clip_id": "Ab3_x-1_0004", "url": "https://www.youtube.com/watch?v=Ab3_x-1&t=5", "frame_width": 3840,
        "frame_height": 2160, "fps": 30, "start_frame": 30, "end_frame": 240, "total_frames": 210,
        "start_time": 1.0, "end_time": 8.0, "duration": 7.0, "vtss_score": 0.71, "motion_score": 0.3,
        "video_clip_score": 0.27, **{name: f"{name} text" for name in CAPTION_FIELDS},
    }  # fmt: skip
    record.update(over)
    return record


def test_ultravideo_row_window_captions_scores_and_file():
    row = parse("ultravideo", _ultravideo_record())
    assert row.source_id == "Ab3_x-1_0004"
    assert row.video == "Ab3_x-1.mp4"
    assert row.window == (1.0, 8.0)
    assert set(row.captions) == set(CAPTION_FIELDS) and len(CAPTION_FIELDS) == 10
    assert row.caption == "Summarized Description text"
    assert row.scores == {"vtss": 0.71, "motion": 0.3, "clip": 0.27}


def test_ultravideo_window_falls_back_to_frames_and_file_template_is_configurable():
    cfg = SourcesConfig(ultravideo_video_file="clips/{clip_id}.mp4", ultravideo_caption_field="Brief Description")
    row = parse("ultravideo", _ultravideo_record(start_time="", end_time=""), cfg)
    assert row.window == (1.0, 8.0)  # 30/30 .. 240/30
    assert row.video == "clips/Ab3_x-1_0004.mp4"
    assert row.caption == "Brief Description text"


@pytest.mark.parametrize("over, message", [
    ({"start_time": 5.0, "end_time": 5.0}, "empty or negative"),
    ({"start_time": "", "end_time": "", "fps": 0}, "must be positive"),
    ({"start_time": "", "end_time": "", "start_frame": "abc"}, "is not a number"),
    ({"clip_id": ""}, "clip_id"),
])  # fmt: skip
def test_ultravideo_bad_rows(over, message):
    with pytest.raises(RowError, match=message):
        parse("ultravideo", _ultravideo_record(**over))


def test_droplet_row_window_from_framestamp_and_file_prefix():
    row = parse("droplet", {"url": "https://youtu.be/XyZ123abc", "fps": "25", "framestamp": "(50,175)",
                            "quality_score": "0.8", "caption": "A dog runs"})  # fmt: skip
    assert row.window == (2.0, 7.0)
    assert row.video == "XyZ123abc--000050_000175-" and row.video_is_prefix
    assert row.source_id == "XyZ123abc--000050_000175"
    assert row.scores == {"quality": 0.8}
    assert row.caption == "A dog runs"


def test_droplet_caption_column_is_configurable():
    cfg = SourcesConfig(droplet_caption_column="cap_long")
    row = parse("droplet", {"url": "u/abc", "fps": 30, "framestamp": "[0, 30]", "cap_long": "long one"}, cfg)
    assert row.caption == "long one"
    assert source_format("droplet").required(cfg)[-1] == "cap_long"


@pytest.mark.parametrize("text", ["(12;abc)", "12,40", "(40,12)", "(1.5,3)", "", "(a,b)"])
def test_malformed_framestamps_are_row_errors(text):
    with pytest.raises(RowError, match="framestamp"):
        parse_framestamp(text)


def test_manifest_row_optional_columns_window_scores_tags():
    row = parse("manifest", {"path": "a/b.mp4", "caption": "c", "id": "clip-7", "start_s": "1.5", "end_s": 4,
                             "aesthetic": "6.1", "my_score": 0.5, "license": "cc-by", "width": ""})  # fmt: skip
    assert (row.source_id, row.video, row.window) == ("clip-7", "a/b.mp4", (1.5, 4.0))
    assert row.scores == {"aesthetic": 6.1, "my": 0.5}
    assert row.tags == {"license": "cc-by"}
    with pytest.raises(RowError, match="both"):
        parse("manifest", {"path": "a.mp4", "start_s": 1})
    assert parse("manifest", {"path": "s3://b/x.mp4"}).source_id == "s3://b/x.mp4"


@pytest.mark.parametrize("url, vid", [
    ("https://www.youtube.com/watch?v=dQw4w9WgXcQ", "dQw4w9WgXcQ"),
    ("https://youtu.be/dQw4w9WgXcQ?t=3", "dQw4w9WgXcQ"),
    ("https://www.youtube.com/shorts/abcDEF12345", "abcDEF12345"),
    ("https://cdn.example.com/videos/clip_01.mp4", "clip_01"),
    ("plainid", "plainid"),
])  # fmt: skip
def test_video_id_from_url(url, vid):
    assert video_id_from_url(url) == vid


# -- tables ---------------------------------------------------------------------
def test_csv_keeps_commas_quotes_newlines_and_invalid_utf8(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b'video,caption\na.mp4,"one, ""two""\nthree"\nb.mp4,caf\xe9\nc.mp4\n')
    table = read_table(Storage(), str(path))
    assert table.columns == ("video", "caption")
    assert table.rows[0] == {"video": "a.mp4", "caption": 'one, "two"\nthree'}
    assert table.rows[1]["caption"] == "caf\udce9"  # the invalid byte survives for the caption cleaner
    assert ERROR_FIELD in table.rows[2]  # wrong field count: a row error, not a lost table


def test_jsonl_bad_line_is_a_row_and_parquet_json_read(tmp_path):
    import pandas as pd

    (tmp_path / "m.jsonl").write_text('{"path": "a.mp4"}\nnot json\n\n[1]\n')
    rows = read_table(Storage(), str(tmp_path / "m.jsonl")).rows
    assert rows[0] == {"path": "a.mp4"} and ERROR_FIELD in rows[1] and ERROR_FIELD in rows[2] and len(rows) == 3
    pd.DataFrame({"path": ["a.mp4"], "caption": ["x"]}).to_parquet(tmp_path / "m.parquet")
    table = read_table(Storage(), str(tmp_path / "m.parquet"))
    assert table.columns == ("path", "caption") and table.rows == [{"path": "a.mp4", "caption": "x"}]
    (tmp_path / "m.json").write_text(json.dumps({"data": [{"path": "b.mp4"}]}))
    assert read_table(Storage(), str(tmp_path / "m.json")).rows == [{"path": "b.mp4"}]


def test_unusable_tables_raise_metadata_error(tmp_path):
    with pytest.raises(MetadataError, match="not found"):
        read_table(Storage(), str(tmp_path / "missing.csv"))
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(MetadataError, match="unknown table format"):
        read_table(Storage(), str(tmp_path / "m.xlsx"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(MetadataError, match="not a readable parquet"):
        read_table(Storage(), str(tmp_path / "bad.parquet"))


def test_droplet_clips_are_found_whatever_their_score_looks_like(tmp_path):
    """The official downloader appends the quality score's value: negative and 1e-05 forms included."""
    from pyratok.core.storage import Storage
    from pyratok.pipelines.ingest.read_inputs import _droplet_index
    from pyratok.pipelines.ingest.sources.droplet import clip_file_prefix, suffix_rank

    names = {
        "XyZ-1_a2b3c--000050_000175--0.25.mp4": "XyZ-1_a2b3c--000050_000175-",  # id with - and _, negative score
        "abcdefghijk--000000_000048-1e-05.mp4": "abcdefghijk--000000_000048-",  # scientific notation
        "q--w--000010_000020-4.5.mp4": "q--w--000010_000020-",  # '--' inside the id itself
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "abcdefghijk--000000_000048-3.25.mp4").write_bytes(b"x")  # a better-scored twin of one clip
    (tmp_path / "not-a-droplet-clip.mp4").write_bytes(b"x")
    index = _droplet_index(Storage(), str(tmp_path))
    assert sorted(index) == sorted(names.values())
    assert index["abcdefghijk--000000_000048-"].endswith("-3.25.mp4")  # 3.25 > 1e-05
    assert index["XyZ-1_a2b3c--000050_000175-"].endswith("--0.25.mp4")
    # a row's own prefix (from url + framestamp) is the key it looks up
    row = parse("droplet", {"url": "https://www.youtube.com/watch?v=XyZ-1_a2b3c", "fps": 25, "framestamp": "(50,175)",
                            "caption": "c"})  # fmt: skip
    assert row.video in index
    assert clip_file_prefix("no-frames-here") is None
    assert suffix_rank("1080p") > suffix_rank("720p") > suffix_rank("-0.5") > suffix_rank("hd")
