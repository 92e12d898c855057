"""Training config: stage overlays and their precedence, presets, schedule, DeepSpeed config filling."""

from __future__ import annotations

import math

import pytest

from pyratok.config import load
from pyratok.core.config import ConfigError
from pyratok.pipelines.train.buckets import draw_geometry, make_buckets, nearest_bucket, seeded_rng
from pyratok.pipelines.train.config import DataSection, FrameRange, ResolutionRange
from pyratok.pipelines.train.stages import load_stage_config, stage_config
from pyratok.pipelines.train.strategy import fill_deepspeed_config, load_deepspeed_config, lr_lambda

TEXT_TERMS = ("ar", "text_kl", "text_align")


def enabled(cfg, term: str) -> bool:
    return getattr(cfg.model.losses, term).enabled


def test_stage_overlays_switch_the_objective_cumulatively():
    s1, s2, s3 = (load_stage_config("local", n) for n in (1, 2, 3))
    assert (s1.train.stage, s2.train.stage, s3.train.stage) == (1, 2, 3)
    for cfg in (s1, s2, s3):
        assert all(enabled(cfg, t) for t in ("l1", "ssim", "commitment", "entropy", "hier_kl", "drift"))
        assert cfg.model.lapq.text_cross_attention and cfg.model.masking.enabled
    assert not any(enabled(s1, t) for t in TEXT_TERMS) and not enabled(s1, "dino")
    assert all(enabled(s2, t) for t in TEXT_TERMS) and not enabled(s2, "dino")
    assert all(enabled(s3, t) for t in TEXT_TERMS) and enabled(s3, "dino")
    # paper weights survive the overlays (a partial YAML term would otherwise reset them)
    assert (s2.model.losses.ar.weight, s1.model.losses.drift.weight, s3.model.losses.commitment.weight) == (1.5, 0.6, 0.25)
    # the scale comes from the preset's per-stage table: stage 3 halves the batch
    assert s3.train.current().batch_size < s1.train.current().batch_size


def test_precedence_preset_then_overlay_then_overrides():
    cfg = load_stage_config("local", 2, ["model.losses.ar.enabled=false", "train.stages.stage2.steps=3"])
    assert not enabled(cfg, "ar") and enabled(cfg, "text_kl")  # --set beats the overlay
    assert cfg.train.current().steps == 3


def test_one_config_retargets_across_stages():
    s1 = load_stage_config("local", 1)
    s3 = stage_config(s1, 3)
    assert s3.train.stage == 3 and enabled(s3, "dino") and enabled(s3, "ar")
    back = stage_config(s3, 1)
    assert back.train.stage == 1 and not enabled(back, "dino") and not enabled(back, "ar")
    assert stage_config(load("local"), 2).model_dump() == load_stage_config("local", 2).model_dump()


def test_bad_stage_and_bad_overlay_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="stage must be one of"):
        load_stage_config("local", 4)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train: {stage: 1}\n")
    with pytest.raises(ConfigError, match="declares train.stage=1"):
        load_stage_config("local", 2, [f"train.stage_presets.stage2={wrong}"])
    with pytest.raises(ConfigError, match="1\\+4k"):
        load_stage_config("local", 1, ["train.stages.stage1.frames.min=8"])


def test_paper_preset_has_the_paper_scale():
    cfg = load("paper")
    train = cfg.train
    assert train.scaling.num_workers == 128 and train.scaling.use_gpu
    assert [train.stages.of(n).steps for n in (1, 2, 3)] == [30_000, 60_000, 180_000]
    # the paper's clips per GPU per step (4, 4, 2), as micro-batches of 1 accumulated (the largest draws fit one at a time)
    assert [train.stages.of(n).batch_size * train.stages.of(n).grad_accum for n in (1, 2, 3)] == [4, 4, 2]
    assert [train.stages.of(n).batch_size for n in (1, 2, 3)] == [1, 1, 1]
    assert cfg.model.tiling.train and cfg.model.tiling.tile_for(2048, 2048) == 384
    # the cap is a safety net above every published draw (stage 3's largest included), below where one clip
    # stops fitting 80 GB (~2.2 G voxels at 256 px tiles, infra/training/README.md)
    assert 97 * 4096 * 4096 <= train.data.max_voxels_per_batch <= 2.2e9
    assert cfg.model.tiling.nested == "auto"
    assert (train.stages.stage1.resolution.min_side, train.stages.stage1.resolution.max_side) == (512, 2048)
    assert (train.stages.stage3.resolution.min_side, train.stages.stage3.resolution.max_side) == (128, 4096)
    assert (train.stages.stage1.frames.min, train.stages.stage1.frames.max) == (17, 97)
    assert train.data.aspect_ratios == ["1:1", "4:3", "3:2", "16:9", "2:1"]
    assert train.optim.lr == 1e-5 and train.schedule.kind == "cosine"
    ds = load_deepspeed_config(train)
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 2
    assert load_stage_config("paper", 3).model.losses.dino.enabled


def test_cluster_preset_reads_addresses_from_the_environment(monkeypatch):
    cfg = load("cluster")
    assert cfg.train.scaling.use_gpu and cfg.train.strategy.name == "deepspeed"
    assert cfg.ray.address is None and cfg.tracking.tracking_uri is None  # from RAY_ADDRESS / MLFLOW_TRACKING_URI
    assert cfg.train.checkpoint.storage_path.startswith("s3://")


def test_cosine_schedule_with_warmup():
    cfg = load_stage_config("local", 1, ["train.stages.stage1.steps=100", "train.schedule.warmup_ratio=0.1",
                                         "train.schedule.min_lr_ratio=0.1"])  # fmt: skip
    factor = lr_lambda(cfg.train)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(100) == pytest.approx(0.1)
    values = [factor(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_deepspeed_auto_values_come_from_the_train_config():
    cfg = load_stage_config("local", 1, ["train.optim.grad_accum=4", "train.optim.grad_clip=0.5", "train.optim.lr=3e-5",
                                         "train.strategy.deepspeed_config=infra/deepspeed/zero3-bf16.json"])  # fmt: skip
    filled = fill_deepspeed_config(load_deepspeed_config(cfg.train), cfg.train, use_gpu=True)
    assert filled["train_micro_batch_size_per_gpu"] == cfg.train.current().batch_size
    paper = load_stage_config("paper", 3)  # a stage's own accumulation beats optim.grad_accum
    paper_ds = fill_deepspeed_config(load_deepspeed_config(paper.train), paper.train, use_gpu=True)
    assert (paper_ds["train_micro_batch_size_per_gpu"], paper_ds["gradient_accumulation_steps"]) == (1, 2)
    assert filled["gradient_accumulation_steps"] == 4 and filled["gradient_clipping"] == 0.5
    assert filled["optimizer"]["params"]["lr"] == 3e-5 and filled["optimizer"]["params"]["torch_adam"] is True
    assert filled["zero_optimization"]["stage"] == 3 and filled["bf16"]["enabled"]
    assert "auto" not in str(filled)
    cpu = load_stage_config("local", 1)
    assert not fill_deepspeed_config(load_deepspeed_config(cpu.train), cpu.train, use_gpu=False)["bf16"]["enabled"]


def test_buckets_and_geometry():
    data = DataSection()
    buckets = make_buckets(data)
    assert {b.name for b in buckets} >= {"1:1", "4:3", "3:2", "16:9", "2:1", "9:16", "1:2"}
    assert nearest_bucket(buckets, 1920, 1080).name == "16:9"
    assert nearest_bucket(buckets, 720, 1280).name == "9:16"
    assert nearest_bucket(buckets, 1000, 1000).name == "1:1"
    res, frames = ResolutionRange(min_side=512, max_side=2048, step=256), FrameRange(min=17, max=97, step=16)
    for seed in range(20):
        rng = seeded_rng(seed)
        for bucket in buckets:
            g = draw_geometry(rng, bucket, resolution=res, frames=frames, spatial_multiple=16, min_source_frames=60)
            assert g.height % 16 == 0 and g.width % 16 == 0 and (g.frames - 1) % 4 == 0 and g.frames <= 60
            assert abs(math.log(g.width / g.height) - math.log(bucket.ratio)) < 0.05
            assert 480 <= math.sqrt(g.width * g.height) <= 2100
    capped = draw_geometry(seeded_rng(1), buckets[0], resolution=res, frames=frames, spatial_multiple=16,
                           min_source_frames=97, max_side=700)  # fmt: skip
    assert math.sqrt(capped.width * capped.height) <= 700
    assert draw_geometry(seeded_rng(1), buckets[0], resolution=res, frames=frames, spatial_multiple=16, min_source_frames=10) is None
    budget = 4 * 33 * 768 * 768
    for seed in range(20):
        g = draw_geometry(seeded_rng(seed), buckets[0], resolution=res, frames=frames, spatial_multiple=16,
                          min_source_frames=97, batch=4, max_voxels=budget)  # fmt: skip
        assert 4 * g.frames * g.height * g.width <= budget
