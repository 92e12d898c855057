"""The one place we reach into Ray Train's internals, kept small so an upgrade breaks it loudly.

Ray Train v2 adds a ``PlacementGroupCleanerCallback`` to every ``TorchTrainer``: a detached actor
that asks the State API every second whether the controller is alive. Our embedded local Ray runs
without the dashboard (that saves ~1 GB and 11 processes), so it has no State API: every query fails
(a warning per second) or, with several Rays on the host, finds another cluster ("multiple active
Ray instances"). An embedded Ray dies with its driver, placement groups included, so there is
nothing to clean. Ray has no public switch for it; ``tests/pipelines/train/test_ray_compat.py``
pins the internals used here.
"""

from __future__ import annotations

CLEANER_MODULE = "ray.train.v2._internal.callbacks.placement_group_callback"
CLEANER_CLASS = "PlacementGroupCleanerCallback"
DEFAULT_CALLBACKS_HOOK = "_create_default_callbacks"


def placement_group_cleaner_class() -> type:
    import importlib

    try:
        return getattr(importlib.import_module(CLEANER_MODULE), CLEANER_CLASS)
    except (ImportError, AttributeError) as exc:
        import ray

        raise RuntimeError(
            f"Ray {ray.__version__} moved {CLEANER_MODULE}.{CLEANER_CLASS}; update pyratok.pipelines.train.ray_compat"
        ) from exc


def trainer_without_placement_group_cleaner() -> type:
    """``TorchTrainer`` minus the placement-group cleaner (for a Ray without a State API)."""
    from ray.train.torch import TorchTrainer

    cleaner = placement_group_cleaner_class()
    if not callable(getattr(TorchTrainer, DEFAULT_CALLBACKS_HOOK, None)):
        raise RuntimeError(f"TorchTrainer has no {DEFAULT_CALLBACKS_HOOK}(); update pyratok.pipelines.train.ray_compat")

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if not isinstance(c, cleaner)]

    return Trainer
