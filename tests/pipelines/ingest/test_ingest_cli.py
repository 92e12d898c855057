"""``pyratok sample-data`` / ``pyratok ingest`` from the command line: help, errors, a killed run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pyratok.cli.main import app
from pyratok.core.storage import Storage
from tests.pipelines.ingest.conftest import snapshot

runner = CliRunner()


@pytest.mark.parametrize("command", ["ingest", "sample-data"])
def test_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert ("--overwrite" in result.output) if command == "ingest" else ("--clips" in result.output)


def _ingest(tmp_path, *args):
    return runner.invoke(app, ["ingest", *args, "-s", f"work_dir={tmp_path / 'work'}", "-s", "tracking.enabled=false",
                               "--output", str(tmp_path / "out")])  # fmt: skip


def test_configuration_and_storage_errors_exit_2_naming_the_problem(tmp_path, s3_server):
    missing = _ingest(tmp_path, "--source", "openvid", "--metadata", str(tmp_path / "nope.csv"), "--videos", str(tmp_path))
    assert missing.exit_code == 2 and "nope.csv not found" in missing.output
    (tmp_path / "m.csv").write_text("path,caption\na.mp4,x\n")
    columns = _ingest(tmp_path, "--source", "openvid", "--metadata", str(tmp_path / "m.csv"), "--videos", str(tmp_path))
    assert columns.exit_code == 2 and "lacks column(s) 'video'" in columns.output
    bad_source = _ingest(tmp_path, "--source", "youtube", "--metadata", "m.csv", "--videos", ".")
    assert bad_source.exit_code == 2 and "--source must be one of" in bad_source.output
    half = _ingest(tmp_path, "--source", "openvid")
    assert half.exit_code == 2 and "go together" in half.output
    override = _ingest(tmp_path, "-s", "ingest.filters.min_fps=60", "-s", "ingest.filters.max_fps=30")
    assert override.exit_code == 2 and "min_fps" in override.output
    no_bucket = runner.invoke(app, [
        "ingest", "--source", "manifest", "--metadata", str(tmp_path / "m.csv"), "--videos", str(tmp_path),
        "--output", "s3://no-such-bucket-here/ds", "-s", f"storage.endpoint_url={s3_server}",
        "-s", f"work_dir={tmp_path / 'work'}", "-s", "tracking.enabled=false",
    ])  # fmt: skip
    assert no_bucket.exit_code == 2 and "s3://no-such-bucket-here/ds" in no_bucket.output and "NoSuchBucket" in no_bucket.output
    (tmp_path / "ov.csv").write_text("video,caption\na.mp4,x\n")
    no_videos = _ingest(tmp_path, "--source", "openvid", "--metadata", str(tmp_path / "ov.csv"), "--videos", str(tmp_path / "typo"))
    assert no_videos.exit_code == 2 and f"videos folder {tmp_path / 'typo'} does not exist" in no_videos.output
    s3_videos = runner.invoke(app, [
        "ingest", "--source", "openvid", "--metadata", str(tmp_path / "ov.csv"), "--videos", "s3://no-such-bucket-here/v",
        "--output", str(tmp_path / "out"), "-s", f"storage.endpoint_url={s3_server}",
        "-s", f"work_dir={tmp_path / 'work'}", "-s", "tracking.enabled=false",
    ])  # fmt: skip
    assert s3_videos.exit_code == 2 and "videos location s3://no-such-bucket-here/v: NoSuchBucket" in s3_videos.output


def _committed(out: Path) -> int:
    return len(list((out / "shards").glob("*.stats.json"))) if (out / "shards").exists() else 0


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_run_resumes_to_the_clean_shard_set(sample_corpus, clean_snapshot, ray_local, tmp_path):
    """SIGKILL the CLI (driver + its local Ray) after its first committed shard, rerun, compare."""
    from pyratok.pipelines.ingest.job import run_ingest
    from tests.pipelines.ingest.conftest import corpus_inputs, ingest_config

    out = tmp_path / "out"
    args = [
        str(Path(sys.executable).parent / "pyratok"), "ingest", "--inputs", str(sample_corpus / "inputs.yaml"),
        "--output", str(out), "-s", f"work_dir={tmp_path / 'work'}", "-s", "tracking.enabled=false",
        "-s", "ray.num_cpus=2", "-s", "ingest.execution.shard_num_cpus=2",  # one shard at a time
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _committed(out) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    committed_at_kill = _committed(out)
    assert committed_at_kill >= 1
    assert not (out / "manifest.parquet").exists()  # it died before the end

    result = run_ingest(ingest_config(tmp_path / "work2"), inputs=corpus_inputs(sample_corpus), output=str(out))

    assert result.shards_skipped >= committed_at_kill >= 1 and result.shards_written >= 1
    assert snapshot(Storage(), str(out)) == clean_snapshot
