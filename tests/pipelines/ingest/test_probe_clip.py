"""ffprobe parsing, keyframe lookup, clip planning and cutting, and the hang guard — on real files."""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pyratok.pipelines.ingest import reasons
from pyratok.pipelines.ingest.clip import ClipPlan, make_clip, plan_clip
from pyratok.pipelines.ingest.config import CutConfig
from pyratok.pipelines.ingest.probe import (
    ProbeError,
    VideoInfo,
    count_decoded_frames,
    keyframes_near,
    parse_probe,
    probe,
)
from pyratok.pipelines.ingest.process import CommandTimeout, run_command
from pyratok.pipelines.ingest.sample_data import VideoSpec, _encode

CUT = CutConfig()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe-videos")
    specs = {
        "h264": VideoSpec("h264_720p_gop12.mp4", 1280, 720, seconds=3.0, gop=12),
        "vp9": VideoSpec("vp9_720p.webm", 1280, 720, codec="vp9"),
        "mpeg4": VideoSpec("mpeg4_720p.avi", 1280, 720, codec="mpeg4"),
        "hevc": VideoSpec("hevc_720p_opengop.mp4", 1280, 720, seconds=2.5, codec="hevc", gop=12),
    }
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda spec: _encode(spec, root), specs.values()))
    rotated = root / "rotated.mp4"  # stored 1280x720 with a 90° display matrix: shown as 720x1280
    run_command(["ffmpeg", "-v", "error", "-i", str(root / specs["h264"].path), "-metadata:s:v", "rotate=90",
                 "-c", "copy", str(rotated)], 60)  # fmt: skip
    return {name: str(root / spec.path) for name, spec in specs.items()} | {"rotated": str(rotated)}


def _info(**over) -> VideoInfo:
    base = dict(width=1920, height=1080, fps=24.0, num_frames=96, duration_s=4.0, codec="h264", pix_fmt="yuv420p",
                format_name="mov,mp4,m4a,3gp,3g2,mj2", major_brand="isom", size_bytes=10**6, bit_rate=2 * 10**6,
                rotation=0, has_audio=False)  # fmt: skip
    return VideoInfo(**{**base, **over})


def test_probe_reads_stream_facts_without_decoding(videos):
    info = probe(videos["h264"], timeout_s=30)
    assert (info.width, info.height, info.fps, info.num_frames, info.codec) == (1280, 720, 24.0, 72, "h264")
    assert info.duration_s == pytest.approx(3.0) and info.is_mp4 and info.size_bytes == os.path.getsize(videos["h264"])
    webm = probe(videos["vp9"], timeout_s=30)
    assert webm.codec == "vp9" and not webm.is_mp4


def test_probe_applies_rotation(videos):
    info = probe(videos["rotated"], timeout_s=30)
    assert (info.width, info.height) == (720, 1280) and info.rotation in (90, 270)


def test_probe_failures_carry_reason_codes(tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n" * 10)
    with pytest.raises(ProbeError) as err:
        probe(str(notes), timeout_s=30)
    assert err.value.reason == reasons.PROBE_FAILED and "Invalid data" in err.value.detail
    with pytest.raises(ProbeError) as err:
        parse_probe({"streams": [{"codec_type": "audio"}], "format": {}})
    assert err.value.reason == reasons.NO_VIDEO_STREAM
    with pytest.raises(ProbeError) as err:
        parse_probe({"streams": [{"codec_type": "video", "codec_name": "h264", "width": 0, "height": 0}]})
    assert err.value.reason == reasons.UNDECODABLE


def test_probe_of_a_hanging_input_times_out(tmp_path):
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)  # opens but never delivers a byte, like a dead network read
    started = time.monotonic()
    with pytest.raises(ProbeError) as err:
        probe(str(fifo), timeout_s=1.5)
    assert err.value.reason == reasons.PROBE_TIMEOUT
    assert time.monotonic() - started < 10


def test_run_command_kills_the_whole_group():
    with pytest.raises(CommandTimeout, match="did not finish within 0.5s"):
        run_command(["bash", "-c", "sleep 30 & sleep 30"], 0.5)


def test_keyframes_near(videos):
    assert keyframes_near(videos["h264"], 1.0, 0.05, timeout_s=30) == [1.0]  # gop 12 at 24 fps: every 0.5 s
    assert keyframes_near(videos["h264"], 1.2, 0.05, timeout_s=30) == []


@pytest.mark.parametrize("window, info_over, cfg_over, expect", [
    (None, {}, {}, ("whole", 0.0, 4.0)),
    (None, {"format_name": "matroska,webm", "codec": "vp9", "major_brand": ""}, {}, ("remux", 0.0, 4.0)),
    (None, {"major_brand": "qt  "}, {}, ("remux", 0.0, 4.0)),
    (None, {"codec": "mpeg4"}, {}, ("reencode", 0.0, 4.0)),
    ((1.0, 3.0), {}, {}, ("copy", 1.0, 3.0)),
    ((1.2, 3.0), {}, {}, ("reencode", 1.2, 3.0)),
    ((1.2, 3.0), {}, {"mode": "copy"}, ("copy", 1.2, 3.0)),
    ((1.0, 3.0), {}, {"mode": "reencode"}, ("reencode", 1.0, 3.0)),
    ((0.0, 4.05), {}, {}, ("whole", 0.0, 4.0)),  # window = the whole file
    ((10.0, 14.0), {}, {}, ("whole", 0.0, 4.0)),  # the file is the pre-cut window
    ((3.0, 9.0), {}, {}, reasons.WINDOW_OUT_OF_RANGE),
])  # fmt: skip
def test_plan_clip(window, info_over, cfg_over, expect):
    keyframes = lambda t, tol: [k for k in (0.0, 1.0, 2.0, 3.0) if abs(k - t) <= tol]  # noqa: E731
    plan = plan_clip(_info(**info_over), window, CutConfig(**cfg_over), keyframes)
    if isinstance(expect, str):
        assert plan.reason == expect
        return
    assert (plan.mode, plan.start_s, plan.end_s) == expect
    if window and expect[0] == "whole":
        assert (plan.clip_start_s, plan.clip_end_s) == (window[0], min(window[1], 4.0) if window[0] == 0 else window[1])


def _cut(src, tmp_path, plan, cfg=CUT, name=None):
    info = probe(src, timeout_s=30)
    dest = tmp_path / f"{name or plan.mode}.mp4"
    make_clip(src, dest, plan, info, cfg, timeout_s=60)
    return dest, probe(str(dest), timeout_s=30)


def test_stream_copy_cut_starts_on_the_keyframe_and_is_deterministic(videos, tmp_path):
    plan = ClipPlan("copy", 1.0, 2.5, 1.0, 2.5)
    dest, out = _cut(videos["h264"], tmp_path, plan)
    assert out.codec == "h264" and out.is_mp4
    assert count_decoded_frames(str(dest), timeout_s=30) == 36  # exactly 1.5 s at 24 fps
    first = dest.read_bytes()
    dest2, _ = _cut(videos["h264"], tmp_path, plan, name="again")
    assert dest2.read_bytes() == first


def test_reencode_cut_is_frame_accurate_h264(videos, tmp_path):
    dest, out = _cut(videos["h264"], tmp_path, ClipPlan("reencode", 1.25, 2.25, 1.25, 2.25))
    assert out.codec == "h264" and out.num_frames == 24 and out.pix_fmt == "yuv420p"


def test_remux_keeps_the_codec_and_reencode_converts_what_we_do_not_store(videos, tmp_path):
    _, vp9 = _cut(videos["vp9"], tmp_path, ClipPlan("remux", 0.0, 2.0, 0.0, 2.0))
    assert vp9.codec == "vp9" and vp9.is_mp4 and vp9.num_frames == 48
    _, mpeg4 = _cut(videos["mpeg4"], tmp_path, ClipPlan("reencode", 0.0, 2.0, 0.0, 2.0))
    assert mpeg4.codec == "h264" and mpeg4.num_frames == 48


def test_open_gop_copy_counts_only_decodable_frames(videos, tmp_path):
    dest, out = _cut(videos["hevc"], tmp_path, ClipPlan("copy", 1.0, 2.5, 1.0, 2.5))
    decoded = count_decoded_frames(str(dest), timeout_s=30)
    assert out.codec == "hevc" and 0 < decoded <= out.num_frames


def test_cut_failure_is_a_cut_error(tmp_path):
    from pyratok.pipelines.ingest.clip import CutError

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(CutError) as err:
        make_clip(str(bad), tmp_path / "out.mp4", ClipPlan("remux", 0, 1, 0, 1), _info(), CUT, timeout_s=30)
    assert err.value.reason == reasons.CUT_FAILED
