"""Fixtures of the caption tests: the tiny offline Qwen2.5-VL (built once) and small real clips."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny offline Qwen2.5-VL checkpoint, written by the same code as `pyratok caption init-tiny`."""
    from pyratok.pipelines.caption.tiny import init_tiny

    return init_tiny(tmp_path_factory.mktemp("tiny-qwen") / "tiny-qwen2.5-vl")


def make_clip(path: Path, *, width: int, height: int, fps: float, seconds: float) -> Path:
    """A real H.264 mp4 from ffmpeg's test source."""
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}",
         "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.fixture(scope="session")
def clip_720p(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "clip720.mp4", width=1280, height=720, fps=24, seconds=3)
