"""Submission through the Ray Jobs API to a real `ray start --head` on 127.0.0.1 (token auth on)."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest

from pyratok.config import load
from pyratok.core.storage import Storage
from pyratok.workflow import devstack
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
    ("stage", "args", "command"),
    [
        ("pipeline", [], f"pipeline run --config {JOB_CONFIG}"),
        ("pipeline", ["rerun", "train3", "--downstream"], f"pipeline rerun --config {JOB_CONFIG} train3 --downstream"),
        ("caption", ["--shards", "s3://b/ds"], f"caption --config {JOB_CONFIG} --shards s3://b/ds"),
        ("caption", ["list", "--shards", "s3://b/ds"], f"caption list --config {JOB_CONFIG} --shards s3://b/ds"),
        ("train", ["--stage", "2"], f"train --config {JOB_CONFIG} --stage 2"),
        ("model", ["--preset", "tiny", "--out", "s3://b/m"], "model init --preset tiny --out s3://b/m"),
        ("tokenize", ["--model", "m", "--video", "v.mp4", "--out", "t.npz"], "tokenize --model m --video v.mp4 --out t.npz"),
    ],
)
def test_groups_resolve_to_a_command_and_config_goes_where_it_is_accepted(tmp_path, stage, args, command):
    spec = build_job(stage, args, config=load("local"), working_dir=tmp_path)
    assert spec.entrypoint == f"python -m pyratok.cli.main {command}"


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
def dev_stack(tmp_path_factory):
    """`pyratok dev up`: S3 (moto), MLflow server with artifacts in that S3, Ray head with token auth."""
    root = tmp_path_factory.mktemp("devstack")
    stack = {s.name: s for s in devstack.up(root, num_cpus=2)}
    yield stack
    assert sorted(devstack.down(root)) == ["mlflow", "ray", "s3"]
    assert not any(s.alive() for s in stack.values())


@pytest.fixture
def ray_head(dev_stack):
    return dev_stack["ray"]


@pytest.mark.integration
@pytest.mark.slow
def test_ingest_job_from_s3_to_s3_through_the_jobs_api(dev_stack, sample_corpus, tmp_path, monkeypatch):
    # Another cluster's token first: Ray caches the first token a process loads; ours must not send it.
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "a" * 32)
    get_auth_headers_if_auth_enabled({})
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    env = devstack.env_exports(list(dev_stack.values()))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    storage = Storage()
    storage.upload_dir(sample_corpus, f"s3://{devstack.DEV_BUCKET}/raw")
    out = f"s3://{devstack.DEV_BUCKET}/dataset"
    cfg = load("local", [f"work_dir={tmp_path / 'work'}", "tracking.experiment=jobs-test"])
    job_id = submit_stage(
        "ingest", ["--inputs", f"s3://{devstack.DEV_BUCKET}/raw/inputs.yaml", "--output", out],
        config=cfg, address=None,  # RAY_API_SERVER_ADDRESS from `dev env`
        env_names=["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    status = wait(job_id, None, timeout_s=600)
    logs = client(None).get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-4000:]
    assert env["AWS_SECRET_ACCESS_KEY"] not in logs
    manifest = storage.read_parquet(f"{out}/manifest.parquet")
    assert len(manifest) > 0 and storage.exists(f"{out}/rejects.parquet")
    # The job tracked into the dev MLflow server (forwarded by name), artifacts in S3.
    mlflow_client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = mlflow_client.get_experiment_by_name("jobs-test")
    (run,) = mlflow_client.search_runs([exp.experiment_id])
    assert run.data.params["ingest.output"] == out
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert storage.list(f"s3://{devstack.DEV_BUCKET}/mlflow-artifacts")


@pytest.mark.integration
@pytest.mark.slow
def test_the_pipeline_as_a_job_keeps_its_state_in_s3(dev_stack, tmp_path, monkeypatch):
    """`pyratok submit pipeline`: the workflow runs as a Ray job; its state and outputs live in S3,
    so this client reads them back, and its runs land in the dev MLflow server, nested."""
    from pyratok.workflow.state import load_state

    env = devstack.env_exports(list(dev_stack.values()))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    root = f"s3://{devstack.DEV_BUCKET}/pipeline-job"
    sets = [f"pipeline.root={root}", f"work_dir={tmp_path / 'job-work'}", "tracking.experiment=pipeline-job",
            "pipeline.stages=[sample-data, ingest, caption, train1]", "train.stages.stage1.steps=2",
            "train.checkpoint.every_n_steps=2", "train.tracking.sample_every_n_steps=2"]  # fmt: skip
    cfg = load("local", sets)
    job_id = submit_stage("pipeline", [], config=cfg, address=None, env_names=["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
    status = wait(job_id, None, timeout_s=900)
    logs = client(None).get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-4000:]
    assert env["AWS_SECRET_ACCESS_KEY"] not in logs
    state = load_state(Storage(), root)
    assert {n for n, r in state.stages.items() if r.status == "completed"} == {"sample-data", "ingest", "caption", "train1"}
    assert state.stages["train1"].outputs["checkpoint"].startswith(f"{root}/checkpoints/")
    tracking = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (parent,) = [r for r in tracking.search_runs([tracking.get_experiment_by_name("pipeline-job").experiment_id])
                 if r.info.run_id == state.pipeline_runs[-1]]  # fmt: skip
    train1 = tracking.get_run(state.stages["train1"].mlflow_run_id)
    assert train1.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert train1.data.tags["pyratok.input.caption.caption_version"] == state.stages["caption"].outputs["caption_version"]


def test_unauthenticated_clients_are_refused(ray_head):
    # A fresh process: Ray caches the token of the first authenticated client in-process.
    code = "from pyratok.workflow.submit import client; client(%r).list_jobs()" % ray_head.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "authentication" in proc.stderr.lower(), proc.stderr[-2000:]
