from pyratok.cli.pipeline import wrap_path


def test_long_paths_break_at_separators_never_mid_name():
    path = "model: checkpoints/stage1-20261203-173348-2125/checkpoint_step0000100/model"
    lines = wrap_path(path, 36)
    assert "".join(lines) == path and all(len(line) <= 36 for line in lines)
    assert lines == ["model: checkpoints/stage1-20261203-", "173348-2125/checkpoint_step0000100/", "model"]
    assert wrap_path("short", 36) == ["short"]
    assert wrap_path("x" * 80, 36) == ["x" * 36, "x" * 36, "x" * 8]  # one name longer than the column
    assert wrap_path("", 36) == []

