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
