"""Each acceptance filter, with its reason code; caption cleaning."""

import pytest

from pyratok.pipelines.ingest import filters, reasons
from pyratok.pipelines.ingest.caption_text import clean_caption
from pyratok.pipelines.ingest.config import CaptionTextConfig, FilterConfig
from pyratok.pipelines.ingest.probe import VideoInfo

CFG = FilterConfig(min_short_side=720, min_duration_s=1.0, max_duration_s=60, min_fps=10, max_fps=120)


def info(width=1920, height=1080, fps=24.0, duration=2.0) -> VideoInfo:
    return VideoInfo(width=width, height=height, fps=fps, num_frames=int(fps * duration), duration_s=duration,
                     codec="h264", pix_fmt="yuv420p", format_name="mov,mp4", major_brand="isom",
                     size_bytes=1000, bit_rate=1000, rotation=0, has_audio=False)  # fmt: skip


@pytest.mark.parametrize("width, height, reason", [
    (1280, 720, None), (720, 1280, None), (3840, 2160, None),
    (854, 480, reasons.TOO_SMALL), (480, 854, reasons.TOO_SMALL), (1279, 719, reasons.TOO_SMALL),
])  # fmt: skip
def test_resolution_uses_the_short_side(width, height, reason):
    got = filters.check_resolution(info(width, height), CFG)
    assert (got.reason if got else None) == reason


@pytest.mark.parametrize("width, height, ok", [
    (1920, 1080, True), (1080, 1920, True), (1024, 1024, True), (960, 720, True), (1080, 720, True),
    (1440, 720, True), (720, 1440, True), (1998, 1080, True),  # 1.85:1 is within 5 % of 16:9
    (1720, 720, False), (1280, 1024, False), (2560, 1080, False),
])  # fmt: skip
def test_aspect_ratio_buckets_either_orientation(width, height, ok):
    got = filters.check_aspect(info(width, height), CFG)
    assert (got is None) == ok
    if got:
        assert got.reason == reasons.ASPECT_RATIO and f"{width}x{height}" in got.detail


def test_aspect_tolerance_and_empty_bucket_list():
    assert filters.check_aspect(info(1280, 1024), CFG.model_copy(update={"aspect_tolerance": 0.1})) is None
    assert filters.check_aspect(info(1720, 720), CFG.model_copy(update={"aspect_buckets": []})) is None


@pytest.mark.parametrize("fps, ok", [(24, True), (10, True), (120, True), (6, False), (240, False), (0, False)])
def test_fps_range(fps, ok):
    got = filters.check_fps(info(fps=fps), CFG)
    assert (got is None) == ok and (ok or got.reason == reasons.FPS_OUT_OF_RANGE)


@pytest.mark.parametrize("duration, ok", [(1.0, True), (59.9, True), (0.5, False), (61, False)])
def test_duration_range(duration, ok):
    got = filters.check_duration(duration, CFG)
    assert (got is None) == ok and (ok or got.reason == reasons.DURATION_OUT_OF_RANGE)


@pytest.mark.parametrize("scores, reason", [
    ({"aesthetic": 5.0, "motion": 0.5}, None),
    ({"aesthetic": 3.9}, reasons.SCORE_BELOW_THRESHOLD),
    ({"motion": 0.1}, reasons.SCORE_BELOW_THRESHOLD),
    ({}, None),  # a source that gives no score passes
    ({"quality": 0.0}, None),  # no threshold on quality
])  # fmt: skip
def test_score_thresholds(scores, reason):
    cfg = FilterConfig(min_scores={"aesthetic": 4.0, "motion": 0.2})
    got = filters.check_scores(scores, cfg)
    assert (got.reason if got else None) == reason


def test_stream_filters_report_the_first_failure():
    assert filters.check_stream(info(854, 480, fps=5), CFG).reason == reasons.TOO_SMALL
    assert filters.check_stream(info(1920, 1080, fps=5), CFG).reason == reasons.FPS_OUT_OF_RANGE
    assert filters.check_stream(info(), CFG) is None


def test_filter_config_validates_ranges_and_buckets():
    with pytest.raises(ValueError, match="min_fps"):
        FilterConfig(min_fps=30, max_fps=24)
    with pytest.raises(ValueError, match="W:H"):
        FilterConfig(aspect_buckets=["16x9"])


@pytest.mark.parametrize("policy, text, expect_text, issues, reason", [
    ({}, "plain", "plain", [], None),
    ({}, "caf\udce9", "caf\ufffd", ["invalid_utf8"], None),
    ({"invalid_utf8": "reject"}, "caf\udce9", None, ["invalid_utf8"], reasons.CAPTION_INVALID_UTF8),
    ({"max_chars": 5}, "abcdefgh", "abcde", ["truncated"], None),
    ({"max_chars": 5, "too_long": "reject"}, "abcdefgh", None, ["truncated"], reasons.CAPTION_TOO_LONG),
    ({}, "nul\x00byte", "nulbyte", [], None),
])  # fmt: skip
def test_caption_cleaning(policy, text, expect_text, issues, reason):
    clean, found, rejection = clean_caption(text, CaptionTextConfig(**policy))
    assert found == issues
    assert (rejection.reason if rejection else None) == reason
    if expect_text is not None:
        assert clean == expect_text
        clean.encode("utf-8")  # valid UTF-8 now
