"""The workflow engine: fingerprints, skipping, rerun, stale marking, resume, MLflow lineage."""

from __future__ import annotations

import mlflow
import pytest

from pyratok.config import load
from pyratok.core.config import fingerprint
from pyratok.core.storage import join
from pyratok.core.tracking import stage_run
from pyratok.workflow.runner import PipelineError, PipelineRunner
from pyratok.workflow.stage import StageContext, StageOutputs, StageSpec


class Recorder:
    """Three chained stages that really read and write files through Storage."""

    def __init__(self):
        self.calls: list[tuple[str, bool]] = []
        self.fail_b = False

    def a(self, ctx: StageContext) -> StageOutputs:
        self.calls.append(("a", ctx.resume))
        uri = join(ctx.root, "a.txt")
        text = f"a:{ctx.config.pipeline.sample_clips}"
        ctx.storage.write_text(uri, text)
        return StageOutputs({"file": uri}, fingerprint(text))

    def b(self, ctx: StageContext) -> StageOutputs:
        self.calls.append(("b", ctx.resume))
        if self.fail_b:
            raise RuntimeError("b broke")
        text = ctx.storage.read_text(ctx.output_of("a", "file")) + f"|b:{ctx.config.caption.version_name}"
        with stage_run(ctx.config.tracking, ctx.config.work_dir, "b") as run:
            uri = join(ctx.root, "b.txt")
            ctx.storage.write_text(uri, text)
        return StageOutputs({"file": uri}, fingerprint(text), run.info.run_id)

    def c(self, ctx: StageContext) -> StageOutputs:
        self.calls.append(("c", ctx.resume))
        text = ctx.storage.read_text(ctx.output_of("b", "file")) + "|c"
        uri = join(ctx.root, "c.txt")
        ctx.storage.write_text(uri, text)
        return StageOutputs({"file": uri}, fingerprint(text))

    def specs(self) -> list[StageSpec]:
        return [
            StageSpec("a", self.a, config_keys=("pipeline.sample_clips",)),
            StageSpec("b", self.b, after=("a",), config_keys=("caption.version_name",)),
            StageSpec("c", self.c, after=("b",)),
        ]

    def names(self) -> list[str]:
        out = [name for name, _ in self.calls]
        self.calls.clear()
        return out


def config(tmp_path, sample_clips=0, version_name="v1"):
    sets = [f"work_dir={tmp_path}", f"pipeline.root={tmp_path / 'root'}", "tracking.experiment=wf"]
    sets += [f"pipeline.sample_clips={sample_clips}", f"caption.version_name={version_name}"]
    return load("local", sets)


def test_second_run_skips_everything_and_a_config_change_reruns_exactly_the_affected(tmp_path):
    rec = Recorder()
    PipelineRunner(config(tmp_path, sample_clips=2), rec.specs()).run()
    assert rec.names() == ["a", "b", "c"]
    PipelineRunner(config(tmp_path, sample_clips=2), rec.specs()).run()
    assert rec.names() == []
    # b's key changed: b reruns, and c because b's output changed; a does not.
    PipelineRunner(config(tmp_path, sample_clips=2, version_name="v2"), rec.specs()).run()
    assert rec.names() == ["b", "c"]


def test_rerun_one_stage_leaves_others_untouched_and_marks_stale(tmp_path):
    rec = Recorder()
    runner = PipelineRunner(config(tmp_path, sample_clips=2), rec.specs())
    runner.run()
    rec.names()
    before = runner.load()
    runner.run(force={"a"}, only={"a"})  # same output: downstream stays valid
    assert rec.names() == ["a"]
    after = runner.load()
    assert after.stages["b"] == before.stages["b"] and after.stages["c"] == before.stages["c"]
    assert [v.state for v in runner.views()] == ["completed", "completed", "completed"]

    changed = PipelineRunner(config(tmp_path, sample_clips=3), rec.specs())
    changed.run(force={"a"}, only={"a"})
    assert rec.names() == ["a"]
    assert [v.state for v in changed.views()] == ["completed", "stale", "stale"]
    changed.run(force={"b", "c"}, only={"b", "c"})  # rerun b --downstream
    assert rec.names() == ["b", "c"]
    assert [v.state for v in changed.views()] == ["completed", "completed", "completed"]


def test_failed_stage_is_recorded_and_the_next_run_resumes_there(tmp_path):
    rec = Recorder()
    rec.fail_b = True
    runner = PipelineRunner(config(tmp_path), rec.specs())
    with pytest.raises(PipelineError, match="'b' failed: RuntimeError: b broke"):
        runner.run()
    state = runner.load()
    assert state.stages["a"].status == "completed"
    assert state.stages["b"].status == "failed" and "b broke" in state.stages["b"].error
    assert "c" not in state.stages
    rec.calls.clear()
    rec.fail_b = False
    runner.run()
    assert rec.calls == [("b", True), ("c", False)]  # a skipped, b resumed
    assert runner.load().stages["b"].attempts == 2


def test_an_interrupt_inside_a_stage_is_recorded_then_goes_on(tmp_path):
    """Ctrl-C (KeyboardInterrupt) in a stage: recorded failed, re-raised as itself, the root released."""
    from pyratok.core.storage import Storage
    from pyratok.workflow.lock import read_lock

    def interrupted(ctx: StageContext) -> StageOutputs:
        raise KeyboardInterrupt

    runner = PipelineRunner(config(tmp_path), [StageSpec("a", interrupted)])
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    rec = runner.load().stages["a"]
    assert (rec.status, rec.error, rec.attempts) == ("failed", "KeyboardInterrupt", 1)
    assert read_lock(Storage(), runner.root) is None
    assert [v.state for v in runner.views()] == ["failed"]


def test_unknown_stage_and_missing_upstream_are_clear_errors(tmp_path):
    rec = Recorder()
    runner = PipelineRunner(config(tmp_path), rec.specs())
    with pytest.raises(ValueError, match="unknown stage"):
        runner.run(force={"zzz"})
    with pytest.raises(PipelineError, match="needs \\['a'\\] completed"):
        runner.run(only={"b"})


def test_lineage_is_queryable_through_mlflow(tmp_path):
    rec = Recorder()
    runner = PipelineRunner(config(tmp_path), rec.specs())
    runner.run()
    state = runner.load()
    b = state.stages["b"]
    client = mlflow.MlflowClient()
    run = client.get_run(b.mlflow_run_id)
    assert run.data.tags["mlflow.parentRunId"] == state.pipeline_runs[-1]
    assert run.data.tags["pyratok.input.a.file"] == state.stages["a"].outputs["file"]
    assert run.data.tags["pyratok.output.file"] == b.outputs["file"]
    assert run.data.tags["pyratok.fingerprint"] == b.fingerprint
    parent = client.get_run(state.pipeline_runs[-1])
    assert parent.data.tags["pyratok.stage.b"] == f"ran:{b.mlflow_run_id}"
    assert "stage_wall_s.b" in parent.data.metrics
    runner.run()
    again = client.get_run(runner.load().pipeline_runs[-1])
    assert again.data.tags["pyratok.stage.b"] == f"cached:{b.mlflow_run_id}"


def test_the_default_stages_follow_the_config(tmp_path):
    """eval after every training stage only when asked; vae-warmup only for a preset that warms its VAE up."""
    from pyratok.workflow.stages import default_stages

    def names(*overrides: str) -> list[str]:
        cfg = load("local", [f"work_dir={tmp_path}", *overrides])
        return [s.name for s in PipelineRunner(cfg, default_stages()).stages]

    assert names() == ["sample-data", "ingest", "caption", "vae-warmup", "train1", "train2", "train3", "eval"]
    assert names("eval.after_each_stage=true", "train.vae_warmup.steps=0") == [
        "sample-data", "ingest", "caption", "train1", "eval1", "train2", "eval2", "train3", "eval"]
    evals = {s.name: s for s in default_stages() if s.name.startswith("eval")}
    assert {name: spec.after[-1] for name, spec in evals.items()} == {"eval1": "train1", "eval2": "train2", "eval": "train3"}
