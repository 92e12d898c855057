"""What a pipeline stage declares: its upstream stages, the config that decides its
result, the resources it asks for, and the function that runs it.

Declaring the config keys is what lets the workflow invalidate exactly the
stages a change affects: a stage's fingerprint hashes the values at its keys
and the output fingerprints of its upstream stages, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from pyratok.core.config import fingerprint

if TYPE_CHECKING:
    from pyratok.config import PyratokConfig
    from pyratok.core.storage import Storage
    from pyratok.workflow.state import StageRecord


@dataclass(frozen=True)
class Resources:
    """What one stage execution asks of the cluster (informational for the driver; the
    stage's own Ray Data / Ray Train code requests the actual resources)."""

    cpus_per_task: float = 1
    gpus_per_worker: float = 0
    workers: str = "auto"


@dataclass
class StageOutputs:
    """What a stage produced: URIs/values by name, a fingerprint of them, its MLflow run."""

    outputs: dict[str, str]
    fingerprint: str
    mlflow_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class StageContext:
    """Everything a stage function gets: the resolved config, storage, the pipeline root,
    and the records of its upstream stages (their outputs are its inputs)."""

    config: "PyratokConfig"
    storage: "Storage"
    root: str
    upstream: dict[str, "StageRecord"]
    resume: bool = False
    """True when this stage's last attempt with the same fingerprint did not finish."""

    def output_of(self, stage: str, name: str) -> str:
        try:
            return self.upstream[stage].outputs[name]
        except KeyError:
            raise ValueError(f"stage input missing: {stage!r} has no output {name!r}; run {stage!r} first") from None


@dataclass(frozen=True)
class StageSpec:
    name: str
    run: Callable[[StageContext], StageOutputs]
    after: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ()
    """Dotted paths in the root config whose values decide this stage's result."""
    resources: Resources = Resources()
    description: str = ""
    enabled: Callable[["PyratokConfig"], bool] = lambda cfg: True
    resolve: Callable[["PyratokConfig"], "PyratokConfig"] = lambda cfg: cfg
    """The config this stage actually runs with (e.g. a training stage's overlay merged in),
    so its fingerprint sees exactly what decides its result."""

    def config_values(self, config: "PyratokConfig") -> dict[str, Any]:
        data = self.resolve(config).model_dump(mode="json")
        out: dict[str, Any] = {}
        for key in self.config_keys:
            node: Any = data
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            out[key] = node
        return out

    def fingerprints(self, config: "PyratokConfig", upstream: dict[str, "StageRecord"]) -> tuple[str, str, dict[str, str]]:
        """``(stage fingerprint, config fingerprint, upstream output fingerprints)``."""
        config_fp = fingerprint({"stage": self.name, "config": self.config_values(config)})
        inputs = {name: upstream[name].output_fingerprint or "" for name in self.after if name in upstream}
        return fingerprint({"config": config_fp, "inputs": inputs}), config_fp, inputs
