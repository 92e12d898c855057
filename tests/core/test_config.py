from pathlib import Path

import pytest

from pyratok.core.config import (
    ConfigError,
    StrictModel,
    apply_overrides,
    deep_merge,
    fingerprint,
    flatten,
    load_config,
    load_yaml_tree,
)


class Inner(StrictModel):
    lr: float = 1e-5
    steps: int = 10
    names: list[str] = []


class Root(StrictModel):
    name: str = "x"
    inner: Inner = Inner()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_inheritance_merges_parents_left_to_right_then_child(tmp_path):
    write(tmp_path / "a.yaml", "name: a\ninner: {lr: 0.1, steps: 1}\n")
    write(tmp_path / "b.yaml", "inner: {steps: 2}\n")
    child = write(tmp_path / "c.yaml", "inherit: [a.yaml, b.yaml]\ninner: {lr: 0.5}\n")
    assert load_yaml_tree(child) == {"name": "a", "inner": {"lr": 0.5, "steps": 2}}


def test_overrides_parse_yaml_values_and_win_over_preset(tmp_path):
    preset = write(tmp_path / "p.yaml", "inner: {lr: 0.1}\n")
    cfg = load_config(Root, preset, ["inner.lr=2e-4", "inner.names=[a, b]", "name=hello"])
    assert cfg.inner.lr == pytest.approx(2e-4)
    assert cfg.inner.names == ["a", "b"]
    assert cfg.name == "hello"
    assert cfg.inner.steps == 10  # dataclass default kept


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["inner.typo=1"], "typo"),
        (["inner.steps=notanumber"], "steps"),
        (["noequals"], "key.path=value"),
        (["name.sub=1"], "name"),
    ],
)
def test_bad_input_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Root, None, overrides)


def test_override_into_a_value_is_reported():
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_inheritance_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "inherit: b.yaml\n")
    write(tmp_path / "b.yaml", "inherit: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml_tree(tmp_path / "a.yaml")


def test_missing_preset_names_it():
    with pytest.raises(ConfigError, match="nope-preset"):
        load_config(Root, "nope-preset.yaml")


def test_deep_merge_does_not_mutate_inputs():
    base = {"a": {"b": 1}}
    merged = deep_merge(base, {"a": {"c": 2}})
    assert merged == {"a": {"b": 1, "c": 2}} and base == {"a": {"b": 1}}


def test_flatten_and_fingerprint_are_stable():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert apply_overrides({}, ["x.y=1"]) == {"x": {"y": 1}}


def test_repo_presets_resolve_from_any_directory(tmp_path, monkeypatch):
    from pyratok.config import load

    monkeypatch.chdir(tmp_path)
    for name in ("local", "local.yaml", "configs/local.yaml"):
        assert load(name).work_dir
