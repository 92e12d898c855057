"""Three-stage training on Ray Train with the tiny PyraTok: DeepSpeed and DDP on 2 CPU workers, stage
chaining, MLflow contents (real server), a worker killed mid-run, and --resume after a failed run.

One stage-1 run (DeepSpeed, 4 steps, a checkpoint after each, on the real MLflow server) is shared: the chain continues from
it, and the fault-tolerance test must end with exactly its weights (same data, seed and steps).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from pyratok.pipelines.train.checkpoint import CHECKPOINT_URI_TAG, INIT_RUN_TAG, MODEL_URI_TAG
from pyratok.pipelines.train.runner import run_training
from pyratok.pipelines.train.stages import load_stage_config
from tests.pipelines.train.conftest import TRUNCATED_KEY, tiny_train_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 4
LR = "train.optim.lr=1e-3"  # large enough that a stage visibly moves the weights


def weights(model_dir: str) -> dict[str, np.ndarray]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return float(np.sqrt(sum(((a[k].astype(np.float64) - b[k]) ** 2).sum() for k in a)))


@pytest.fixture(scope="module")
def stage1(ray_local, mlflow_server, train_dataset, tmp_path_factory):
    work = tmp_path_factory.mktemp("train-stage1")
    overrides = [*tiny_train_overrides(work, 1, steps=STEPS, every=1, tracking_uri=mlflow_server), LR]
    cfg = load_stage_config("local", 1, overrides)
    result = run_training(cfg, stage=1, data=str(train_dataset), strategy="deepspeed", overrides=overrides)
    return result


def test_three_stages_deepspeed_ddp_chain_with_mlflow(stage1, mlflow_server, train_dataset, s3_server, s3_bucket, s3_storage, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    # stage 1 (DeepSpeed ZeRO-2 on gloo): right step count, bad samples skipped and counted
    assert stage1.steps == STEPS and stage1.restarts == []
    assert stage1.skipped.get("bad_metadata", 0) >= 1
    assert stage1.skipped.get("corrupt", 0) >= 1
    assert Path(stage1.checkpoint_uri, "state", "zero").is_dir()

    # stage 2 (DDP) starts from stage 1, named by its MLflow run id
    overrides2 = [*tiny_train_overrides(tmp_path / "s2", 2, steps=2, tracking_uri=mlflow_server), LR]
    cfg2 = load_stage_config("local", 2, overrides2)
    stage2 = run_training(cfg2, stage=2, data=str(train_dataset), strategy="ddp", init_from=stage1.mlflow_run_id,
                          overrides=overrides2)  # fmt: skip
    assert stage2.steps == 2 and stage2.init_from_run_id == stage1.mlflow_run_id
    assert Path(stage2.checkpoint_uri, "state", "optimizer.pt").is_file()

    # stage 3 (DeepSpeed) starts from stage 2's checkpoint folder; shards stream from S3 and
    # Ray Train writes its checkpoints to S3 (the cluster layout, on the moto server)
    for shard in sorted((train_dataset / "shards").glob("*.tar")):
        s3_storage.upload(shard, f"{s3_bucket}/data/shards/{shard.name}")
    overrides3 = [*tiny_train_overrides(tmp_path / "s3", 3, steps=2, tracking_uri=mlflow_server), LR,
                  f"storage.endpoint_url={s3_server}", f"train.checkpoint.storage_path={s3_bucket}/checkpoints"]  # fmt: skip
    cfg3 = load_stage_config("local", 3, overrides3)
    stage3 = run_training(cfg3, stage=3, data=f"{s3_bucket}/data", init_from=stage2.checkpoint_uri, overrides=overrides3)
    assert stage3.steps == 2 and stage3.init_from_run_id == stage2.mlflow_run_id
    assert stage3.checkpoint_uri.startswith(f"{s3_bucket}/checkpoints/") and stage3.model_uri.startswith("s3://")
    assert s3_storage.exists(f"{stage3.model_uri}/model.safetensors")
    assert stage3.skipped.get("bad_metadata", 0) >= 1

    # stage 2 really started from stage 1's weights (not from a fresh init)
    from pyratok.model import PyraTok
    from pyratok.pipelines.train.loop import seed_everything

    seed_everything(cfg2.train.seed)
    fresh_dir = tmp_path / "fresh"
    PyraTok.from_config(load_stage_config("local", 1).model).save_pretrained(str(fresh_dir))
    w1, w2, w0 = weights(stage1.model_uri), weights(stage2.model_uri), weights(str(fresh_dir))
    # Only tensors stage 1 trained: the AR head first learns in stage 2 (stage 1 moves it by weight
    # decay alone, ~1e-5 relative) and moves alike from either start, which would blur the comparison.
    shared = sorted(k for k in set(w1) & set(w2) & set(w0) if np.linalg.norm(w1[k] - w0[k]) > 1e-3 * np.linalg.norm(w0[k]))
    assert shared
    pick = lambda w: {k: w[k] for k in shared}  # noqa: E731
    assert distance(pick(w2), pick(w1)) < 0.6 * distance(pick(w2), pick(w0))

    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient()
    run1, run2, run3 = (client.get_run(r.mlflow_run_id) for r in (stage1, stage2, stage3))
    for run, stage in ((run1, 1), (run2, 2), (run3, 3)):
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["train.stage"] == str(stage) and params["train.optim.lr"] == "0.001"
        assert params["run.stage"] == str(stage) and params["run.data"] in (str(train_dataset), f"{s3_bucket}/data")
        metrics = run.data.metrics
        for name in ("loss", "loss/l1", "loss/commitment", "loss/drift", "lr", "throughput/clips_per_s",
                     "throughput/tokens_per_s", "data/skipped/corrupt", *(f"codebook_usage/level{i}" for i in range(1, 5))):
            assert name in metrics, f"stage {stage} run lacks metric {name}"
        assert metrics["throughput/clips_per_s"] > 0 and metrics["throughput/tokens_per_s"] > 0
        if stage == 1:  # the truncated clip is named in the run, not only counted
            assert metrics[f"data/corrupt/{TRUNCATED_KEY}"] == 1.0 and metrics["data/skipped/corrupt"] >= 1
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(2, (STEPS if stage == 1 else 2) + 1, 2))
        assert run.data.tags[CHECKPOINT_URI_TAG].endswith(f"checkpoint_step{(STEPS if stage == 1 else 2):07d}")
        assert run.data.tags[MODEL_URI_TAG].endswith("/model")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"checkpoint.json", "model", "images", "config.yaml"} <= artifacts
        assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} >= {"model/config.json", "model/model.safetensors"}
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
        assert images and all(p.startswith("images/samples+step+") for p in images)  # one series, by step
        clips = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
        assert clips and all(p.startswith("samples/step") and p.endswith(".mp4") for p in clips)
        if stage == 1:  # input | reconstruction, side by side: twice as wide as high (square training crops)
            import av

            with av.open(client.download_artifacts(run.info.run_id, clips[0], str(tmp_path))) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            assert len(frames) >= 2 and frames[0].shape[1] == 2 * frames[0].shape[0]
        # the exported tokenizer is a Model Registry version, its alias the stage, its files the checkpoint's
        [version] = client.search_model_versions(f"run_id = '{run.info.run_id}'")
        assert version.name == "pyratok" and version.source == f"runs:/{run.info.run_id}/model"
        assert version.tags["pyratok.model_uri"] == run.data.tags[MODEL_URI_TAG] and version.tags["pyratok.stage"] == str(stage)
        assert client.get_model_version_by_alias("pyratok", f"stage{stage}").version == version.version
    assert "loss/ar" not in run1.data.metrics and "loss/ar" in run2.data.metrics and "loss/text_kl" in run2.data.metrics
    assert "loss/dino" in run3.data.metrics and "loss/dino" not in run2.data.metrics
    assert run2.data.tags[INIT_RUN_TAG] == stage1.mlflow_run_id and run3.data.tags[INIT_RUN_TAG] == stage2.mlflow_run_id
    local = client.download_artifacts(run1.info.run_id, "checkpoint.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["checkpoint_uri"] == stage1.checkpoint_uri


# -- faults ------------------------------------------------------------------------
def train_worker_pids() -> list[int]:
    """Ray Train worker actors started by this test session's Ray (not their DataLoader children)."""
    import psutil

    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in proc.name() and "RayTrainWorker" not in proc.parent().name():
                out.append(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return out


class WorkerKiller(threading.Thread):
    """Kills one training worker (SIGKILL) each time the run registers a checkpoint of the given steps."""

    def __init__(self, run_dir: Path, at_steps: list[int]):
        super().__init__(daemon=True)
        self.snapshot = run_dir / "checkpoint_manager_snapshot.json"
        self.at_steps = list(at_steps)
        self.killed: list[tuple[int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        for step in self.at_steps:
            marker = f"checkpoint_step{step:07d}"
            while not self.stop.is_set():
                if self.snapshot.is_file() and marker in self.snapshot.read_text(errors="ignore"):
                    break
                time.sleep(0.05)
            pids = train_worker_pids()
            if self.stop.is_set() or not pids:
                return
            os.kill(pids[-1], signal.SIGKILL)
            self.killed.append((step, pids[-1]))


def test_killed_workers_recover_then_resume_after_failure_matches_uninterrupted_run(
    stage1, ray_local, train_dataset, tmp_path
):
    """A worker killed after step 1 is restarted by Ray Train from that checkpoint; one killed again
    after step 2 exhausts max_failures=1 and the run fails; ``pyratok train --resume`` continues from
    step 2 to the end. Same data, seed and steps as the shared stage-1 run: identical final weights,
    which needs the optimizer, scheduler, RNG and data-stream state restored exactly."""
    overrides = [*tiny_train_overrides(tmp_path, 1, steps=STEPS, every=1), LR, "train.failure.max_failures=1"]
    cfg = load_stage_config("local", 1, overrides)
    run_name = "stage1-killed"
    killer = WorkerKiller(tmp_path / "checkpoints" / run_name, [1, 2])
    killer.start()
    with pytest.raises(Exception, match="(?i)worker|fail|died|actor"):
        run_training(cfg, stage=1, data=str(train_dataset), strategy="deepspeed", run_name=run_name, overrides=overrides)
    killer.stop.set()
    assert [step for step, _ in killer.killed] == [1, 2]

    env = {**os.environ, "PYRATOK_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "pyratok.cli.main", "train", "--stage", "1", "--data", str(train_dataset),
           "--resume", "--strategy", "deepspeed", *[a for o in overrides for a in ("--set", o)]]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    # the console keeps our lines only: no Ray Train line per report(), no placement-group cleaner
    # polling a State API that the embedded Ray does not serve
    console = done.stdout + done.stderr
    assert "Reporting training result" not in console and "Checkpoint successfully created" not in console
    assert "PlacementGroupCleaner" not in console
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    checkpoint = lines["checkpoint"]
    assert checkpoint.endswith(f"{run_name}/checkpoint_step{STEPS:07d}")
    assert lines["restarted from step(s)"] == "1, 2"
    assert lines["mlflow run"].split()[0]  # the run id is printed
    assert weights(str(Path(checkpoint) / "model")).keys() == weights(stage1.model_uri).keys()
    resumed, reference = weights(str(Path(checkpoint) / "model")), weights(stage1.model_uri)
    assert all(np.array_equal(resumed[k], reference[k]) for k in reference), (
        f"max diff {max(float(np.abs(resumed[k] - reference[k]).max()) for k in reference)}"
    )


def test_init_from_latest_is_the_newest_finished_previous_stage_run(stage1, mlflow_server, tmp_path):
    import mlflow

    from pyratok.core.storage import Storage
    from pyratok.core.tracking import STAGE_TAG
    from pyratok.pipelines.train.runner import _init_source

    cfg2 = load_stage_config("local", 2, tiny_train_overrides(tmp_path, 2, steps=1, tracking_uri=mlflow_server))
    storage = Storage(cfg2.storage)
    init = _init_source(cfg2, storage, 2, "latest", from_scratch=False, resumed=False, tracking=True)
    chosen = mlflow.MlflowClient().get_run(init.run_id)
    assert chosen.info.status == "FINISHED" and chosen.data.tags[STAGE_TAG] == "train-stage1"
    assert init.model_uri == chosen.data.tags[MODEL_URI_TAG]
    assert chosen.info.start_time >= mlflow.MlflowClient().get_run(stage1.mlflow_run_id).info.start_time

    # a registered version or a runs:/ URI of a stage run: the checkpoint it exported, with its run for lineage
    [version] = mlflow.MlflowClient().search_model_versions(f"run_id = '{stage1.mlflow_run_id}'")
    for spec in (f"models:/pyratok/{version.version}", f"runs:/{stage1.mlflow_run_id}/model"):
        init = _init_source(cfg2, storage, 2, spec, from_scratch=False, resumed=False, tracking=True)
        assert (init.model_uri, init.run_id) == (stage1.model_uri, stage1.mlflow_run_id), spec

    # an experiment with no stage-1 run: a clear error, not a fresh start
    empty = load_stage_config("local", 2, [*tiny_train_overrides(tmp_path, 2, steps=1, tracking_uri=mlflow_server),
                                           "tracking.experiment=pyratok-empty-for-latest"])
    with pytest.raises(FileNotFoundError, match="no finished stage-1 run"):
        _init_source(empty, storage, 2, "latest", from_scratch=False, resumed=False, tracking=True)
