from pyratok.cli.pipeline import wrap_path


def test_long_paths_break_at_separators_never_mid_name():
    path = "model: checkpoints/stage1-20261203-173348-2125/checkpoint_step0000100/model"
    lines = wrap_path(path, 36)
    assert "".join(lines) == path and all(len(line) <= 36 for line in lines)
    assert lines == ["model: checkpoints/stage1-20261203-", "173348-2125/checkpoint_step0000100/", "model"]
    assert wrap_path("short", 36) == ["short"]
    assert wrap_path("x" * 80, 36) == ["x" * 36, "x" * 36, "x" * 8]  # one name longer than the column
    assert wrap_path("", 36) == []


def test_a_model_inside_its_checkpoint_is_shown_once_and_paths_are_relative_to_the_root():
    from pyratok.cli.pipeline import output_items

    root = "/w/pipeline"
    ckpt = f"{root}/checkpoints/stage1-x/checkpoint_step0000100"
    items = output_items({"checkpoint": ckpt, "model": f"{ckpt}/model", "steps": 100}, root)
    assert items == ["checkpoint: checkpoints/stage1-x/checkpoint_step0000100 (+ model/)", "steps: 100"]
    # an eval's model, or a model exported elsewhere, keeps its own line
    assert output_items({"checkpoint": ckpt, "model": "s3://b/m"}, root) == [
        "checkpoint: checkpoints/stage1-x/checkpoint_step0000100", "model: s3://b/m"]
    assert output_items({"model": f"{ckpt}/model"}, root) == ["model: checkpoints/stage1-x/checkpoint_step0000100/model"]
