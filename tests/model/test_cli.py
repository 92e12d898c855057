"""``pyratok model init`` / ``tokenize`` / ``reconstruct`` on a real (ffmpeg-made) video."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from pyratok.cli.main import app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("model-cli")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=72x50:rate=8", "-t", "1.25",
                    "-pix_fmt", "yuv420p", str(root / "in.mp4")], check=True)
    (root / "broken.mp4").write_bytes(b"not a video at all")
    result = CliRunner().invoke(app, ["model", "init", "--preset", "tiny", "--out", str(root / "tiny")])
    assert result.exit_code == 0, result.output
    assert "trainable parameters" in result.output
    return root


def test_tokenize_writes_one_array_per_level(workdir):
    out = workdir / "tokens.npz"
    result = CliRunner().invoke(app, ["tokenize", "--model", str(workdir / "tiny"), "--video", str(workdir / "in.mp4"),
                                      "--text", "a test pattern", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "10x50x72 -> 9x48x64" in result.output  # 1+4k frames, multiples of 16
    data = np.load(out)
    assert [data[f"level{i}"].shape for i in range(1, 5)] == [(1, 9, 12, 16), (1, 5, 6, 8), (1, 3, 3, 4), (1, 3, 3, 4)]
    assert data["level1"].dtype == np.uint16 and tuple(data["video_shape"]) == (9, 48, 64)
    from pyratok.model.pyramid import TokenPyramid

    assert TokenPyramid.load_npz(out).shapes[0] == (1, 9, 12, 16)


def test_reconstruct_writes_mp4_and_prints_scores(workdir):
    out = workdir / "recon.mp4"
    result = CliRunner().invoke(app, ["reconstruct", "--model", str(workdir / "tiny"), "--video", str(workdir / "in.mp4"),
                                      "--out", str(out), "--tile", "32"])
    assert result.exit_code == 0, result.output
    assert re.search(r"PSNR \d+\.\d+ dB\s+SSIM -?\d\.\d{4}", result.output)
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
                            "stream=width,height,nb_read_frames", "-of", "csv=p=0", str(out)],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "64,48,9"


def test_a_clip_over_the_memory_budget_is_refused_naming_it_and_the_budget(workdir):
    out = workdir / "refused.mp4"
    result = CliRunner().invoke(app, ["reconstruct", "--model", str(workdir / "tiny"), "--video", str(workdir / "in.mp4"),
                                      "--out", str(out), "--memory-budget-gb", "0.001"])
    last = result.output.strip().splitlines()[-1]
    assert result.exit_code == 2 and last.startswith("error: "), result.output
    assert "in.mp4" in last and "9x48x64" in last and "budget of 0.001 GiB" in last
    assert not out.exists()


def test_bad_inputs_exit_2_with_one_line(workdir):
    runner = CliRunner()
    broken = runner.invoke(app, ["tokenize", "--model", str(workdir / "tiny"), "--video", str(workdir / "broken.mp4"),
                                 "--out", str(workdir / "x.npz")])
    last = broken.output.strip().splitlines()[-1]
    assert broken.exit_code == 2 and last.startswith("error: ") and "broken.mp4" in last
    missing = runner.invoke(app, ["model", "init", "--preset", "wan2.2", "--out", str(workdir / "w")])
    assert missing.exit_code == 2 and "--vae" in missing.output
    unknown = runner.invoke(app, ["model", "init", "--preset", "huge", "--out", str(workdir / "w")])
    assert unknown.exit_code == 2 and "unknown model preset" in unknown.output
    not_model = runner.invoke(app, ["tokenize", "--model", str(workdir), "--video", str(workdir / "in.mp4"),
                                    "--out", str(workdir / "x.npz")])
    assert not_model.exit_code == 2 and "not a PyraTok checkpoint" in not_model.output
