"""Strategy state in one process: a DDP-strategy checkpoint restores model, optimizer and schedule
exactly (the same next step), and the digest that guards restores sees any change."""

from __future__ import annotations

import torch

from pyratok.pipelines.train.stages import load_stage_config
from pyratok.pipelines.train.strategy import DDPStrategy, state_digest


def build(cfg):
    from pyratok.model import PyraTok
    from pyratok.pipelines.train.loop import seed_everything

    seed_everything(cfg.train.seed)
    model = PyraTok.from_config(cfg.model)
    model.train()
    return model, DDPStrategy(model, cfg.train, device=torch.device("cpu"), world_size=1)


def one_step(strategy, video, seed):
    torch.manual_seed(seed)  # the model's masking draws from the global RNG
    out = strategy.micro_step(video, ["a test pattern"], progress=0.5)
    assert strategy.step()
    return out


def test_ddp_strategy_checkpoint_round_trip(tmp_path):
    cfg = load_stage_config("local", 1, ["train.stages.stage1.steps=10", "train.optim.lr=1e-3"])
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    model, strategy = build(cfg)
    for seed in (1, 2):
        one_step(strategy, video, seed)
    strategy.save(tmp_path, rank=0)
    saved_digest, saved_lr = strategy.optimizer_digest(), strategy.lr

    twin_model, twin = build(cfg)
    assert twin.optimizer_digest() != saved_digest
    twin.load(tmp_path)
    assert twin.optimizer_digest() == saved_digest and twin.lr == saved_lr
    for name, param in model.named_parameters():
        assert torch.equal(param, dict(twin_model.named_parameters())[name]), name

    one_step(strategy, video, 3)
    one_step(twin, video, 3)
    assert twin.optimizer_digest() == strategy.optimizer_digest()
    for name, param in model.named_parameters():
        assert torch.equal(param, dict(twin_model.named_parameters())[name]), name


def test_state_digest_sees_values_shapes_and_structure():
    base = {"state": {0: {"exp_avg": torch.zeros(3), "step": torch.tensor(2.0)}}, "param_groups": [{"lr": 1e-3}]}
    assert state_digest(base) == state_digest({"param_groups": [{"lr": 1e-3}], "state": {0: {"step": torch.tensor(2.0), "exp_avg": torch.zeros(3)}}})
    changed = {"state": {0: {"exp_avg": torch.tensor([0.0, 0.0, 1e-8]), "step": torch.tensor(2.0)}}, "param_groups": [{"lr": 1e-3}]}
    reshaped = {"state": {0: {"exp_avg": torch.zeros(3, 1), "step": torch.tensor(2.0)}}, "param_groups": [{"lr": 1e-3}]}
    assert len({state_digest(base), state_digest(changed), state_digest(reshaped)}) == 3
