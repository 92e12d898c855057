"""Resolve the config of one training stage: preset, then the stage's overlay, then overrides.

Precedence (lowest first): pydantic defaults < ``--config`` preset (with its
``inherit:`` chain) < stage overlay (``train.stage_presets.stageN``, by default
``configs/stageN.yaml``, which sets the stage's loss terms and ``train.stage``)
< ``--set`` overrides. The overlay wins over the preset so that one preset
(local, cluster, paper) serves all three stages; ``--set`` wins over both.
"""

from __future__ import annotations

import os
from typing import Iterable

from pyratok.core.config import ConfigError, apply_overrides, deep_merge, load_yaml_tree
from pyratok.pipelines.train.config import STAGES


def _check_stage(stage: int) -> int:
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
    return int(stage)


def stage_overlay(stage_presets: dict[str, str], stage: int) -> dict:
    """The overlay tree of a stage (its own ``inherit:`` chain resolved)."""
    name = stage_presets.get(f"stage{stage}")
    if not name:
        raise ConfigError(f"train.stage_presets has no entry for stage{stage}")
    tree = load_yaml_tree(name)
    declared = (tree.get("train") or {}).get("stage")
    if declared is not None and int(declared) != stage:
        raise ConfigError(f"stage preset {name!r} declares train.stage={declared}, but stage {stage} was asked for")
    return deep_merge(tree, {"train": {"stage": stage}})


def load_stage_config(preset: str | os.PathLike | None, stage: int, overrides: Iterable[str] = ()):
    """``pyratok train --stage N --config PRESET --set ...`` -> the stage's ``PyratokConfig``."""
    from pyratok.config import DEFAULT_PRESET, load

    stage = _check_stage(stage)
    overrides = list(overrides)
    base = load(preset or DEFAULT_PRESET, overrides)  # validates the preset; names its stage presets
    overlay = stage_overlay(base.train.stage_presets, stage)
    return load(preset or DEFAULT_PRESET, overrides, extra=overlay)


def stage_config(cfg, stage: int, overrides: Iterable[str] = ()):
    """A root config resolved for ``stage`` (the API path: a config object instead of a preset).

    A config already resolved for this stage is returned as is (plus ``overrides``);
    otherwise the stage overlay is merged over it, then ``overrides``.
    """
    from pyratok.config import PyratokConfig

    stage = _check_stage(stage)
    data = cfg.model_dump(mode="json")
    if cfg.train.stage is not None and cfg.train.stage != stage:
        data["train"]["stage"] = None  # re-target, e.g. one pipeline config driving stages 1..3
    if data["train"]["stage"] != stage:
        data = deep_merge(data, stage_overlay(cfg.train.stage_presets, stage))
    data = apply_overrides(data, overrides)
    try:
        return PyratokConfig.model_validate(data)
    except Exception as exc:
        raise ConfigError(f"invalid config for stage {stage}:\n{exc}") from exc
