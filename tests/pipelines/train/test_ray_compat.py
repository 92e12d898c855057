"""The Ray Train internals pyratok relies on still exist and behave (fails loudly on a Ray upgrade that moves them)."""

from __future__ import annotations

import pytest


def test_the_cleaner_callback_and_the_hook_that_adds_it_exist():
    from ray.train.torch import TorchTrainer

    from pyratok.pipelines.train.ray_compat import placement_group_cleaner_class

    cleaner = placement_group_cleaner_class()
    assert cleaner.__name__ == "PlacementGroupCleanerCallback"
    assert callable(TorchTrainer._create_default_callbacks)


@pytest.mark.integration
def test_the_trainer_without_the_cleaner_drops_that_callback_alone(ray_local, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    from pyratok.core.ray_runtime import serves_state_api
    from pyratok.pipelines.train.ray_compat import placement_group_cleaner_class, trainer_without_placement_group_cleaner

    assert serves_state_api() is False  # the embedded local Ray runs without the dashboard
    kwargs = dict(train_loop_per_worker=lambda: None, scaling_config=ray.train.ScalingConfig(num_workers=1),
                  run_config=ray.train.RunConfig(storage_path=str(tmp_path)))
    full = [type(c) for c in TorchTrainer(**kwargs)._create_default_callbacks()]
    trimmed = [type(c) for c in trainer_without_placement_group_cleaner()(**kwargs)._create_default_callbacks()]
    assert placement_group_cleaner_class() in full
    assert trimmed == [c for c in full if c is not placement_group_cleaner_class()]
