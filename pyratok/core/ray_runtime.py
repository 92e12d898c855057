"""Connect to Ray: a cluster when an address is given, else an embedded local one.

The embedded default uses ``address="local"`` so a stale cluster file from an
earlier ``ray start`` can never hijack it, and caps the object store so a
laptop or CI box is not asked for 30 % of its RAM.
"""

from __future__ import annotations

import os

from pyratok.core.config import StrictModel
from pyratok.core.logging import get_logger, quiet_ray_data

log = get_logger(__name__)

# Ray Train waits one health-check interval per report(); 2 s default dominates tiny local runs.
# Its preemption watcher polls for node drains, which a local Ray never has (and its actor logs an
# error-level line about its own constructor arguments at every start).
LOCAL_ENV_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_DEDUP_LOGS": "1",
                      "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


class RayConfig(StrictModel):
    address: str | None = None
    """``ray://`` / ``host:port`` / ``auto`` for a cluster. None: ``$RAY_ADDRESS``, else local."""
    num_cpus: int | None = None
    """Local only: CPUs to give the embedded cluster (None: all)."""
    object_store_memory_mb: int = 1024
    """Local only: object store cap."""
    namespace: str = "pyratok"
    runtime_env: dict = {}


_DASHBOARD: dict[str, str] = {}
"""``ray.init``'s public ``dashboard_url`` for the Ray this process connected to ("" when it has none)."""


def serves_state_api() -> bool:
    """Whether the connected Ray serves the State API (its dashboard). Unknown (Ray started by someone
    else, e.g. inside a Ray job): assume a full cluster."""
    url = _DASHBOARD.get("url")
    return True if url is None else bool(url)


def resolve_address(cfg: RayConfig, address: str | None = None) -> str | None:
    return address or cfg.address or os.environ.get("RAY_ADDRESS") or None


def init_ray(cfg: RayConfig, address: str | None = None) -> None:
    """Idempotent ``ray.init`` for the driver of a stage."""
    import ray

    if ray.is_initialized():
        return
    target = resolve_address(cfg, address)
    if target and target != "local":
        log.info("connecting to Ray cluster at %s", target)
        context = ray.init(address=target, namespace=cfg.namespace, runtime_env=cfg.runtime_env or None,
                           log_to_driver=True)
        if hasattr(context, "dashboard_url"):  # a Ray Client context has none: unknown, assume a full cluster
            _DASHBOARD["url"] = context.dashboard_url or ""
        quiet_ray_data()
        return
    for key, value in LOCAL_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    context = ray.init(
        address="local",
        num_cpus=cfg.num_cpus,
        object_store_memory=cfg.object_store_memory_mb * 1024 * 1024,
        include_dashboard=False,
        namespace=cfg.namespace,
        runtime_env=cfg.runtime_env or None,
        log_to_driver=True,
        configure_logging=False,
    )
    _DASHBOARD["url"] = getattr(context, "dashboard_url", None) or ""
    quiet_ray_data()
    log.info("started a local Ray (%s CPUs)", int(ray.cluster_resources().get("CPU", 0)))


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _DASHBOARD.clear()
