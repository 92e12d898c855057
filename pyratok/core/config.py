"""Typed configs: YAML presets with inheritance, merged over pydantic defaults, then CLI overrides.

A preset may name parents with ``inherit: [base.yaml, ...]`` (paths relative to
the preset); parents merge first, left to right, and the preset merges over
them. Overrides are ``dotted.key=value`` strings whose values parse as YAML
(``train.lr=1e-4``, ``ingest.filters.min_short_side=480``, ``ray.address=null``).
Unknown keys are errors, so a typo in a preset fails loudly instead of being
silently ignored.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict

INHERIT_KEY = "inherit"
CONFIG_DIR_ENV = "PYRATOK_CONFIG_DIR"

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A preset or override that cannot be loaded; the message names the file or key."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are rejected, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def repo_config_dir() -> Path:
    """``$PYRATOK_CONFIG_DIR``, else the presets shipped in the package (the repo's ``configs/``
    in an editable install, site-packages in a wheel install)."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env)
    return shipped_dir("pyratok.presets")


def shipped_dir(package: str) -> Path:
    """The folder of a data-only package we ship (importlib.resources: any install, any working directory)."""
    from importlib.resources import files

    return Path(str(files(package)))


def resolve_preset(name_or_path: str | os.PathLike) -> Path:
    """A path as given if it exists, else a preset name looked up in the repo's ``configs/``.

    ``local``, ``local.yaml`` and ``configs/local.yaml`` all resolve from any
    working directory, so the README's commands work wherever they are typed.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    base = repo_config_dir()
    for candidate in (base / path, base / path.name, base / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"config {str(name_or_path)!r} not found (looked in the working directory and {base})")


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``: dicts merge recursively, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml_tree(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """One preset with its ``inherit`` chain resolved into a single dict."""
    path = resolve_preset(path)
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"config inheritance cycle: {chain}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level, got {type(data).__name__}")
    parents = data.pop(INHERIT_KEY, None) or []
    if isinstance(parents, str):
        parents = [parents]
    merged: dict = {}
    for parent in parents:
        parent_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
        if not parent_path.is_file():
            parent_path = resolve_preset(parent)
        merged = deep_merge(merged, load_yaml_tree(parent_path, (*_seen, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {key!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return out


def load_config(
    model: type[T],
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    extra: dict | None = None,
) -> T:
    """Defaults of ``model`` <- preset at ``path`` (with inheritance) <- ``extra`` <- ``overrides``."""
    data = load_yaml_tree(path) if path else {}
    if extra:
        data = deep_merge(data, extra)
    data = apply_overrides(data, overrides)
    try:
        return model.model_validate(data)
    except Exception as exc:  # pydantic's message lists every bad field with its path
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid config{where}:\n{exc}") from exc


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b.c": value}`` (lists stay values), e.g. for MLflow params."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def fingerprint(data: Any) -> str:
    """Stable short hash of JSON-able data (configs, input listings); key order does not matter."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
