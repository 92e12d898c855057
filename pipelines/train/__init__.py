"""The training stage: three-stage PyraTok training on Ray Train (DeepSpeed or DDP).

``run_training(cfg, stage=..., data=...) -> TrainResult`` is the API (the CLI and the workflow
layer call it); heavy modules load on first use so importing the package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyratok.pipelines.train.runner import TrainResult, run_training
    from pyratok.pipelines.train.stages import load_stage_config, stage_config

__all__ = ["TrainResult", "run_training", "load_stage_config", "stage_config"]


def __getattr__(name: str):
    if name in ("TrainResult", "run_training"):
        from pyratok.pipelines.train import runner

        return getattr(runner, name)
    if name in ("load_stage_config", "stage_config"):
        from pyratok.pipelines.train import stages

        return getattr(stages, name)
    raise AttributeError(f"module 'pyratok.pipelines.train' has no attribute {name!r}")
