"""``pyratok train`` argument and input errors: one clear line, exit code 2, nothing started."""

from __future__ import annotations

from typer.testing import CliRunner

from pyratok.cli.main import app


def test_missing_data_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["train", "--stage", "1", "--data", str(tmp_path / "nowhere"),
                                      "--set", f"work_dir={tmp_path}"])  # fmt: skip
    assert result.exit_code == 2
    assert "no WebDataset shards" in result.output and "Traceback" not in result.output


def test_bad_stage_strategy_and_resume_without_a_run(train_dataset, tmp_path):
    runner = CliRunner()
    bad_stage = runner.invoke(app, ["train", "--stage", "4", "--data", str(train_dataset)])
    assert bad_stage.exit_code == 2 and "--stage" in bad_stage.output
    bad_strategy = runner.invoke(app, ["train", "--stage", "1", "--data", str(train_dataset), "--strategy", "fsdp"])
    assert bad_strategy.exit_code == 2 and "deepspeed or ddp" in bad_strategy.output
    no_run = runner.invoke(app, ["train", "--stage", "2", "--data", str(train_dataset), "--resume",
                                 "--set", f"work_dir={tmp_path}"])  # fmt: skip
    assert no_run.exit_code == 2 and "no earlier stage-2 run" in no_run.output
    bad_init = runner.invoke(app, ["train", "--stage", "2", "--data", str(train_dataset), "--init-from",
                                   str(tmp_path / "missing-model"), "--set", f"work_dir={tmp_path}"])  # fmt: skip
    assert bad_init.exit_code == 2 and "--init-from" in bad_init.output
    # stage 2 without a starting point: refused, naming both ways out (not a silent fresh start)
    no_init = runner.invoke(app, ["train", "--stage", "2", "--data", str(train_dataset), "--set", f"work_dir={tmp_path}"])
    assert no_init.exit_code == 2 and "--init-from" in no_init.output and "--from-scratch" in no_init.output
    both = runner.invoke(app, ["train", "--stage", "3", "--data", str(train_dataset), "--init-from", "latest",
                               "--from-scratch", "--set", f"work_dir={tmp_path}"])  # fmt: skip
    assert both.exit_code == 2 and "exclude each other" in both.output
