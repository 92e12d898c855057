import os

import mlflow
import pytest

from pyratok.core.secrets import REDACTED
from pyratok.core.storage import Storage
from pyratok.core.tracking import TrackingConfig, config_params, log_file_artifact, stage_run


def test_stage_run_logs_redacted_params_and_nests_under_parent(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    cfg = TrackingConfig(experiment="t")
    config = {"a": {"lr": 0.1}, "storage": {"password": "pw", "endpoint": "very-secret-value"}}
    with stage_run(cfg, str(tmp_path), "pipeline") as parent:
        parent_id = parent.info.run_id
    with stage_run(cfg, str(tmp_path), "ingest", config, parent_run_id=parent_id) as run:
        artifact = tmp_path / "stats.json"
        artifact.write_text("{}")
        log_file_artifact(Storage(), str(artifact), "stats")
        run_id = run.info.run_id
    got = mlflow.MlflowClient().get_run(run_id)
    assert got.data.params["a.lr"] == "0.1"
    assert got.data.params["storage.password"] == REDACTED
    assert got.data.params["storage.endpoint"] == REDACTED
    assert got.data.tags["mlflow.parentRunId"] == parent_id
    assert got.info.status == "FINISHED"
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "stats")] == ["stats/stats.json"]
    assert (tmp_path / "mlflow.db").exists()


def test_failed_body_marks_run_failed(tmp_path):
    cfg = TrackingConfig(experiment="t")
    with pytest.raises(RuntimeError):
        with stage_run(cfg, str(tmp_path), "ingest") as run:
            run_id = run.info.run_id
            raise RuntimeError("boom")
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FAILED"


def test_disabled_tracking_yields_none(tmp_path):
    with stage_run(TrackingConfig(enabled=False), str(tmp_path), "x") as run:
        assert run is None


def test_config_params_truncate_long_values():
    params = config_params({"long": "x" * 10000})
    assert len(params["long"]) == 6000


@pytest.mark.integration
def test_stage_run_against_a_real_mlflow_server(mlflow_server, tmp_path):
    cfg = TrackingConfig(tracking_uri=mlflow_server, experiment="server-test")
    with stage_run(cfg, str(tmp_path), "ingest", {"k": 1}) as run:
        mlflow.log_metric("videos_per_s", 3.5)
    got = mlflow.MlflowClient(tracking_uri=mlflow_server).get_run(run.info.run_id)
    assert got.data.metrics["videos_per_s"] == 3.5 and got.data.params["k"] == "1"


def test_a_stage_run_logs_its_own_sections_as_params_and_the_whole_config_as_yaml(tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    config = {"train": {"lr": 0.1, "resume_from": None, "stages": {"stage1": {"steps": 5}}},
              "caption": {"vllm": {"gpu_memory_utilization": 0.9}}, "model": {"backbone": {"path": "vae"}},
              "storage": {"endpoint": "very-secret-value"}}
    with stage_run(TrackingConfig(experiment="t"), str(tmp_path), "train-stage1", config,
                   sections=("train", "model.backbone")) as run:
        run_id = run.info.run_id
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).data.params == {"train.lr": "0.1", "train.stages.stage1.steps": "5",
                                                  "model.backbone.path": "vae"}  # no caption.*, no unset value
    logged = yaml.safe_load(open(client.download_artifacts(run_id, "config.yaml", str(tmp_path))))
    assert logged == {**config, "storage": {"endpoint": REDACTED}}
    assert config_params({"a": None, "b": {"c": None, "d": 1}}) == {"b.d": "1"}


def test_every_stage_run_is_tagged_with_the_code_and_environment_that_made_it(tmp_path):
    import hashlib
    import subprocess
    from importlib import metadata
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    with stage_run(TrackingConfig(experiment="t"), str(tmp_path), "ingest", {}) as run:
        run_id = run.info.run_id
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    assert tags["pyratok.version"] == metadata.version("pyratok")
    assert tags["pyratok.lock_digest"] == hashlib.sha256((root / "requirements.lock").read_bytes()).hexdigest()[:16]
    assert len(tags["pyratok.env_digest"]) == 16
    if (root / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root).stdout.strip()
        assert tags["pyratok.git_commit"] == head and tags["pyratok.git_dirty"] in ("true", "false")


def test_a_second_work_dir_gets_its_own_store_though_mlflow_exported_the_first(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports $MLFLOW_TRACKING_URI; that is not the user choosing a store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = TrackingConfig(experiment="t")
    with stage_run(cfg, str(tmp_path / "one"), "ingest"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"].endswith("one/mlflow.db")  # what mlflow itself does
    with stage_run(cfg, str(tmp_path / "two"), "ingest"):
        pass
    assert (tmp_path / "one" / "mlflow.db").exists() and (tmp_path / "two" / "mlflow.db").exists()
    # a store the user exported is still theirs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mine.db'}")
    with stage_run(cfg, str(tmp_path / "three"), "ingest"):
        pass
    assert (tmp_path / "mine.db").exists() and not (tmp_path / "three" / "mlflow.db").exists()
