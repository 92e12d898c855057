"""The whole pipeline on the embedded default with the tiny presets: the real stages, end to end.

One pipeline is built once for the module (sample-data -> ingest -> caption ->
vae-warmup -> train 1..3 -> eval) and then rerun, reconfigured and interrupted; each test states
what must and must not have run again by comparing the state's records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from pyratok.config import load
from pyratok.core.tracking import configure
from pyratok.workflow.runner import PipelineRunner
from pyratok.workflow.stages import pipeline_stages

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = ["sample-data", "ingest", "caption", "vae-warmup", "train1", "train2", "train3", "eval"]
# Small enough for CI, big enough that a killed run has a checkpoint to resume from.
FAST = [
    "train.stages.stage1.steps=4", "train.stages.stage2.steps=6", "train.stages.stage3.steps=4",
    "train.checkpoint.every_n_steps=2", "train.tracking.sample_every_n_steps=2", "train.vae_warmup.steps=5",
]  # fmt: skip


def overrides(work: Path, *extra: str) -> list[str]:
    return [f"work_dir={work}", "tracking.experiment=pipeline-test", *FAST, *extra]


def runner_for(work: Path, *extra: str) -> PipelineRunner:
    cfg = load("local", overrides(work, *extra))
    return PipelineRunner(cfg, pipeline_stages(cfg))


def snapshot(runner: PipelineRunner) -> dict[str, tuple]:
    """What identifies one execution of each stage: its MLflow run, end time and outputs."""
    return {n: (r.mlflow_run_id, r.ended_at, r.outputs) for n, r in runner.load().stages.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_local):
    work = tmp_path_factory.mktemp("pipeline") / "work"
    runner = runner_for(work)
    runner.run()
    return work


def test_full_pipeline_completes_and_lineage_traces_a_checkpoint_to_its_data(built):
    runner = runner_for(built)
    state = runner.load()
    assert [v.name for v in runner.views()] == STAGES
    assert all(v.state == "completed" for v in runner.views()), [(v.name, v.state, v.record.error) for v in runner.views()]
    configure(runner.config.tracking, runner.config.work_dir)
    client = mlflow.MlflowClient()
    # Walk back from the final checkpoint's run to the shards it was trained on.
    train3 = client.get_run(state.stages["train3"].mlflow_run_id)
    assert train3.data.tags["pyratok.output.checkpoint"] == state.stages["train3"].outputs["checkpoint"]
    train2_id = train3.data.tags["pyratok.upstream_run.train2"]
    train1_id = client.get_run(train2_id).data.tags["pyratok.upstream_run.train1"]
    train1 = client.get_run(train1_id)
    caption = client.get_run(train1.data.tags["pyratok.upstream_run.caption"])
    assert train1.data.tags["pyratok.input.caption.caption_version"] == caption.data.tags["pyratok.output.caption_version"]
    ingest = client.get_run(caption.data.tags["pyratok.upstream_run.ingest"])
    assert ingest.data.tags["pyratok.output.dataset"] == state.stages["ingest"].outputs["dataset"]
    # Every stage run is nested under this invocation's pipeline run.
    parent = state.pipeline_runs[-1]
    for name in ("ingest", "caption", "vae-warmup", "train1", "train2", "train3", "eval"):
        assert client.get_run(state.stages[name].mlflow_run_id).data.tags["mlflow.parentRunId"] == parent
    # The eval stage scored the final tokenizer on the val split, and the pipeline's run has its curve.
    evaluated = client.get_run(state.stages["eval"].mlflow_run_id)
    assert evaluated.data.tags["pyratok.eval.model"] == state.stages["train3"].outputs["model"]
    assert evaluated.data.metrics["val/clips"] == 4 and evaluated.data.metrics["val/failed"] == 0
    assert {"val/psnr", "val/ssim", "val/vae_psnr", "val/untrained_psnr", "val/codebook/all/utilisation",
            "val/retrieval/t2v/R_at_1"} <= set(evaluated.data.metrics)
    curve = client.get_metric_history(parent, "eval/psnr")
    assert [(m.step, m.value) for m in curve] == [(3, evaluated.data.metrics["val/psnr"])]
    # every training stage starts from the warmed-up VAE
    warmed = state.stages["vae-warmup"].outputs["vae"]
    assert train1.data.params["model.backbone.path"] == warmed
    # each stage's tokenizer is a Model Registry version under its stage alias, the final one with eval's metrics
    for stage in (1, 2, 3):
        record = state.stages[f"train{stage}"]
        version = client.get_model_version_by_alias("pyratok", f"stage{stage}")
        assert record.outputs["registered"] == f"models:/pyratok/{version.version}"
        assert version.run_id == record.mlflow_run_id and version.source == f"runs:/{record.mlflow_run_id}/model"
        assert version.tags["pyratok.model_uri"] == record.outputs["model"] and version.tags["pyratok.stage"] == str(stage)
    final = client.get_model_version_by_alias("pyratok", "stage3")
    assert float(final.tags["eval.psnr"]) == pytest.approx(evaluated.data.metrics["val/psnr"], rel=1e-5)
    assert float(final.tags["eval.psnr_gain_db"]) == pytest.approx(evaluated.data.metrics["val/psnr_gain_db"], rel=1e-5)
    assert "eval.psnr" not in client.get_model_version_by_alias("pyratok", "stage1").tags  # eval measured stage 3 only
    # the dataset each run read is an MLflow input, pinned by the manifest's digest, its role the context
    import hashlib

    root = state.stages["ingest"].outputs["dataset"]
    digest = hashlib.sha256(Path(root, "manifest.parquet").read_bytes()).hexdigest()[:16]
    for name, context in (("caption", "caption"), ("train1", "training"), ("train3", "training"), ("eval", "validation")):
        [used] = client.get_run(state.stages[name].mlflow_run_id).inputs.dataset_inputs
        assert (used.dataset.digest, used.dataset.source) == (digest, f'{{"uri": "{root}"}}'), name
        assert {t.key: t.value for t in used.tags}["mlflow.data.context"] == context
    # each run's params are its own stage's; the whole resolved config is its config.yaml
    assert not any(k.startswith(("caption.", "ingest.")) for k in train1.data.params)
    assert all(k.startswith("caption.") for k in caption.data.params)
    assert "config.yaml" in {a.path for a in client.list_artifacts(train1.info.run_id)}


def test_second_run_skips_everything(built):
    runner = runner_for(built)
    before = snapshot(runner)
    runner.run()
    assert snapshot(runner) == before


def test_rerun_one_stage_leaves_the_others_untouched(built):
    runner = runner_for(built)
    before = snapshot(runner)
    runner.run(force={"caption"}, only={"caption"})
    after = snapshot(runner)
    assert after["caption"][1] > before["caption"][1]
    assert {k: v for k, v in after.items() if k != "caption"} == {k: v for k, v in before.items() if k != "caption"}
    # The same caption settings give the same caption version: training stays valid.
    assert after["caption"][2] == before["caption"][2]


def test_a_config_change_reruns_exactly_the_affected_stages(built):
    before = snapshot(runner_for(built))
    changed = runner_for(built, "train.stages.stage3.steps=2")
    assert [v.state for v in changed.views()][-1] == "stale"
    changed.run()
    after = snapshot(changed)
    rerun = sorted(k for k in after if after[k] != before[k])
    assert rerun == ["eval", "train3"]  # the eval of the new model too
    assert changed.load().stages["train3"].outputs["steps"] == "2"


def test_an_eval_setting_reruns_only_the_eval(built):
    runner_for(built, "train.stages.stage3.steps=2").run()  # what the last test left (no-op when it ran)
    before = snapshot(runner_for(built, "train.stages.stage3.steps=2"))
    changed = runner_for(built, "train.stages.stage3.steps=2", "eval.max_clips=2")
    changed.run()
    after = snapshot(changed)
    assert sorted(k for k in after if after[k] != before[k]) == ["eval"]
    configure(changed.config.tracking, changed.config.work_dir)
    run = mlflow.MlflowClient().get_run(changed.load().stages["eval"].mlflow_run_id)
    assert run.data.metrics["val/clips"] == 2


def test_an_interrupted_pipeline_resumes_at_the_interrupted_stage(built):
    """A real kill of the driver process while train2 runs; the next run skips what completed."""
    extra = ["train.stages.stage2.steps=8"]  # a new train2 (and so train3) run
    cmd = [sys.executable, "-m", "pyratok.cli.main", "pipeline", "run", "--config", "local"]
    for item in overrides(built, *extra):
        cmd += ["--set", item]
    before = snapshot(runner_for(built, *extra))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runner = runner_for(built, *extra)
    checkpoints = Path(runner.root) / "checkpoints"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:  # wait for train2's first checkpoint of this run
            state = runner.load()
            rec = state.stages.get("train2")
            if rec and rec.status == "running" and rec.started_at and any(
                p.stat().st_mtime > rec.started_at for p in checkpoints.glob("stage2-*/checkpoint_*")
            ):
                break
            assert proc.poll() is None, "the pipeline ended before it could be interrupted"
            time.sleep(0.5)
        else:
            pytest.fail("train2 never wrote a checkpoint")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert runner.load().stages["train2"].status == "running"  # the killed driver could not finish it

    runner.run()
    after = snapshot(runner)
    state = runner.load()
    assert {k: after[k] for k in ("sample-data", "ingest", "caption", "vae-warmup", "train1")} == {
        k: before[k] for k in ("sample-data", "ingest", "caption", "vae-warmup", "train1")
    }
    assert state.stages["train2"].status == "completed" and state.stages["train2"].attempts >= 2
    assert state.stages["train2"].outputs["steps"] == "8"
    assert state.stages["train3"].status == "completed" and after["train3"] != before["train3"]
    configure(runner.config.tracking, runner.config.work_dir)
    resumed = mlflow.MlflowClient().get_run(state.stages["train2"].mlflow_run_id)
    assert "pyratok.train.resumed_run" in resumed.data.tags  # continued from the killed run's checkpoint


def test_a_finished_run_says_where_the_tokenizer_is_and_how_to_try_it(built):
    from pyratok.cli.pipeline import next_steps
    from pyratok.core.secrets import strip_url_credentials
    from pyratok.core.tracking import resolve_tracking_uri

    runner = runner_for(built)
    records = runner.load().stages
    files = records["train3"].outputs["model"]
    tokenizer, mlflow_line, try_it = next_steps(runner)
    assert tokenizer == f"tokenizer (train3): models:/pyratok@stage3  (files: {files})"  # a stable alias
    uri = resolve_tracking_uri(runner.config.tracking, runner.config.work_dir)  # the suite's server, or sqlite alone
    if uri.startswith("http"):
        assert mlflow_line == f"MLflow: {strip_url_credentials(uri)}  (experiment pipeline-test)"
    else:
        assert mlflow_line == f"browse the runs: mlflow ui --backend-store-uri {uri}"
    served = next_steps(runner_for(built, "tracking.tracking_uri=http://someone:s3cret@127.0.0.1:5000"))[1]
    assert served == "MLflow: http://127.0.0.1:5000  (experiment pipeline-test)"  # no credentials printed
    local = next_steps(runner_for(built, f"tracking.tracking_uri=sqlite:///{built}/mlflow.db"))[1]
    assert local == f"browse the runs: mlflow ui --backend-store-uri sqlite:///{built}/mlflow.db"
    words = try_it.removeprefix("try it: ").split()
    env = [f"MLFLOW_TRACKING_URI={strip_url_credentials(uri)}"]
    assert words[: len(env) + 4] == [*env, "pyratok", "reconstruct", "--model", "models:/pyratok@stage3"]
    # the alias loads the very tokenizer the files hold
    from safetensors.torch import load_file

    from pyratok.model.sources import local_dir

    mlflow.set_tracking_uri(uri)
    fetched = load_file(str(local_dir("models:/pyratok@stage3", cache_dir=built / "alias-cache") / "model.safetensors"))
    want = load_file(os.path.join(files, "model.safetensors"))
    assert fetched.keys() == want.keys() and all(fetched[k].equal(want[k]) for k in want)
    video = words[words.index("--video") + 1]
    assert video.startswith(records["sample-data"].outputs["corpus"]) and os.path.isfile(video)


def test_status_fits_100_columns_and_every_output_reads_back_whole(built, capsys):
    from pyratok.cli.pipeline import _print_status

    runner = runner_for(built)
    _print_status(runner)
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 100
    rows = [line.split("│") for line in lines if line.count("│") == 7]
    text = "".join(row[5].strip() for row in rows)  # the outputs column, its wrapped lines rejoined
    root = runner.root.rstrip("/") + "/"
    for name, record in runner.load().stages.items():
        for key, value in record.outputs.items():
            assert f"{key}: {str(value).removeprefix(root)}" in text, (name, key)
        if record.mlflow_run_id:
            assert any(row[1].strip() == name and row[6].strip() == record.mlflow_run_id[:8] for row in rows), name
