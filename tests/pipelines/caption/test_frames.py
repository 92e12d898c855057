"""Frame sampling: plans, shapes and timestamps of decoded samples checked against ffprobe."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from pyratok.pipelines.caption.config import FrameSamplingConfig
from pyratok.pipelines.caption.frames import DecodeError, decode_frame_sample, plan_indices, plan_num_frames
from pyratok.pipelines.caption.vision import VisionSpec, smart_resize
from tests.pipelines.caption.conftest import make_clip

SPEC = VisionSpec()


@pytest.mark.parametrize(
    "total,fps,cfg,expected",
    [
        (72, 24.0, dict(fps=2.0), 6),  # 3 s at 2 fps
        (240, 24.0, dict(fps=2.0, max_frames=8), 8),  # capped
        (24, 24.0, dict(fps=2.0, min_frames=4), 4),  # 1 s -> raised to min_frames
        (5, 24.0, dict(fps=2.0, min_frames=4), 4),  # never more frames than the clip has (rounded to 2)
        (3, 24.0, dict(fps=2.0, min_frames=4), 2),
        (1, 24.0, dict(fps=2.0), 1),  # a single frame is repeated by patchify
        (75, 25.0, dict(fps=1.0, min_frames=1), 2),  # 3 frames -> down to a multiple of the temporal patch
    ],
)
def test_plan_num_frames(total, fps, cfg, expected):
    assert plan_num_frames(total, fps, FrameSamplingConfig(**cfg), SPEC) == expected


def test_plan_indices_span_the_clip():
    idx = plan_indices(72, 6)
    assert idx[0] == 0 and idx[-1] == 71 and np.all(np.diff(idx) > 0)


def ffprobe_frame_times(path) -> list[float]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=best_effort_timestamp_time",
         "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [float(f["best_effort_timestamp_time"]) for f in json.loads(out)["frames"]]


def test_sample_shapes_and_timestamps_match_ffprobe(clip_720p):
    cfg = FrameSamplingConfig(fps=2.0, min_frames=4, max_frames=64, min_pixels=3136, max_pixels=448 * 448)
    sample = decode_frame_sample(clip_720p.read_bytes(), cfg, SPEC)
    times = ffprobe_frame_times(clip_720p)
    assert sample.source_frames == len(times) == 72
    assert sample.source_fps == pytest.approx(24.0)
    t, h, w, c = sample.frames.shape
    assert (t, c) == (6, 3) and sample.frames.dtype == np.uint8
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 448 * 448
    assert w / h == pytest.approx(1280 / 720, rel=0.1)
    np.testing.assert_array_equal(sample.indices, plan_indices(72, 6))
    expected = np.asarray([times[i] - times[0] for i in sample.indices])
    np.testing.assert_allclose(sample.timestamps, expected, atol=1e-3)
    assert sample.sample_fps == pytest.approx(2.0)
    # The frames are real pictures of the clip (testsrc2 is colourful), not blank buffers.
    assert sample.frames.std() > 20


def test_4k_clip_is_decoded_straight_to_the_small_target(tmp_path):
    clip = make_clip(tmp_path / "uhd.mp4", width=3840, height=2160, fps=4, seconds=1)
    cfg = FrameSamplingConfig(fps=2.0, min_frames=2, max_frames=4, min_pixels=3136, max_pixels=112 * 112)
    sample = decode_frame_sample(clip, cfg, SPEC)  # a local path works too
    assert sample.source_size == (2160, 3840)
    assert sample.frames.shape[1] * sample.frames.shape[2] <= 112 * 112
    assert sample.frames.shape[1:] == (*smart_resize(2160, 3840, factor=28, min_pixels=3136, max_pixels=112 * 112), 3)


def test_corrupt_and_videoless_inputs_raise_with_a_reason(tmp_path, clip_720p):
    with pytest.raises(DecodeError) as err:
        decode_frame_sample(b"definitely not a video" * 50, FrameSamplingConfig(), SPEC)
    assert err.value.reason == "undecodable"
    audio = tmp_path / "tone.m4a"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=duration=0.5", str(audio)], check=True
    )
    with pytest.raises(DecodeError) as err:
        decode_frame_sample(audio, FrameSamplingConfig(), SPEC)
    assert err.value.reason == "no_video_stream"
    # A clip cut in half whose index survives (moov first): it opens and lists every frame, but is
    # not captioned from the half that decodes; it is reported corrupt.
    faststart = tmp_path / "faststart.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(clip_720p), "-c", "copy", "-movflags", "+faststart",
                    str(faststart)], check=True)  # fmt: skip
    with pytest.raises(DecodeError) as err:
        decode_frame_sample(faststart.read_bytes()[: faststart.stat().st_size // 2], FrameSamplingConfig(), SPEC)
    assert err.value.reason == "corrupt"
    assert "its header lists" in str(err.value) or "decoding failed after" in str(err.value)


def test_rotated_phone_clip_is_sampled_upright(tmp_path):
    """A display-rotation tag (as phones write) is applied, exactly as ffmpeg's autorotate shows the clip."""
    src = make_clip(tmp_path / "landscape.mp4", width=448, height=252, fps=8, seconds=1)
    rotated = tmp_path / "rotated.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), "-c", "copy", "-metadata:s:v:0", "rotate=90",
                    str(rotated)], check=True)  # fmt: skip
    cfg = FrameSamplingConfig(fps=2.0, min_frames=2, max_frames=2, min_pixels=3136, max_pixels=252 * 448)
    sample = decode_frame_sample(rotated.read_bytes(), cfg, SPEC)
    assert sample.source_size == (448, 252)
    h, w = sample.frames.shape[1:3]
    assert h > w
    # ffmpeg's own upright rendering of frame 0, scaled to the same size, matches ours.
    raw = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(rotated), "-frames:v", "1", "-vf", f"scale={w}:{h}:flags=bicubic",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True,
    ).stdout  # fmt: skip
    upright = np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
    assert np.abs(upright.astype(int) - sample.frames[0].astype(int)).mean() < 2
