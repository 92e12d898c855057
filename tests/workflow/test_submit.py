"""Submission through the Ray Jobs API to a real `ray start --head` on 127.0.0.1 (token auth on)."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from pyratok.config import load
from pyratok.workflow import services
from pyratok.workflow.submit import JOB_CONFIG, SubmitError, build_job, client, describe, submit_stage, wait

SECRET = "not-a-real-secret-but-keep-it-out-of-logs"


def test_build_job_ships_resolved_config_and_forwards_env_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    cfg = load("local", ["ingest.filters.min_short_side=480"])
    spec = build_job("ingest", ["--output", "s3://b/ds"], config=cfg, working_dir=tmp_path, env_names=["AWS_SECRET_ACCESS_KEY"])
    assert spec.entrypoint == f"python -m pyratok.cli.main ingest --config {JOB_CONFIG} --output s3://b/ds"
    assert spec.runtime_env["working_dir"] == str(tmp_path)
    assert spec.runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    text = describe(spec)
    assert "AWS_SECRET_ACCESS_KEY (credential)" in text and SECRET not in text
    # Credentials are never forwarded unless named.
    plain = build_job("ingest", [], config=cfg, working_dir=tmp_path)
    assert "AWS_SECRET_ACCESS_KEY" not in plain.runtime_env["env_vars"]


@pytest.mark.parametrize(
    ("stage", "args", "env", "message"),
    [
        ("ingest", ["--config", "x.yaml"], [], "pass --config to `pyratok submit`"),
        ("nope", [], [], "unknown stage"),
        ("ingest", [], ["PYRATOK_TEST_UNSET_VAR"], "not set in this shell"),
    ],
)
def test_bad_submissions_say_why(tmp_path, stage, args, env, message):
    with pytest.raises(SubmitError, match=message):
        build_job(stage, args, config=load("local"), working_dir=tmp_path, env_names=env)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    head = services.start_ray_head(tmp_path_factory.mktemp("ray-head"), num_cpus=2, auth=True)
    yield head
    head.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_ingest_job_submitted_to_a_ray_head_succeeds(ray_head, sample_corpus, tmp_path, monkeypatch):
    for key, value in ray_head.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    out = tmp_path / "dataset"
    cfg = load("local", [f"work_dir={tmp_path / 'work'}", "tracking.experiment=jobs-test"])
    job_id = submit_stage(
        "ingest", ["--inputs", str(sample_corpus / "inputs.yaml"), "--output", str(out)],
        config=cfg, address=ray_head.url, env_names=["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    status = wait(job_id, ray_head.url, timeout_s=600)
    logs = client(ray_head.url).get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-4000:]
    assert SECRET not in logs
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) > 0 and (out / "rejects.parquet").exists()
    assert client(ray_head.url).get_job_info(job_id).entrypoint.startswith("python -m pyratok.cli.main ingest")


def test_unauthenticated_clients_are_refused(ray_head):
    # A fresh process: Ray caches the token of the first authenticated client in-process.
    code = "from pyratok.workflow.submit import client; client(%r).list_jobs()" % ray_head.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "authentication" in proc.stderr.lower(), proc.stderr[-2000:]
