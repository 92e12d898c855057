"""Strategy state in one process: a DDP-strategy checkpoint restores model, optimizer and schedule
exactly (the same next step), and the digest that guards restores sees any change. (DeepSpeed's
restore is exercised on Ray by the worker-kill test.)"""

from __future__ import annotations

import torch

from pyratok.pipelines.train.stages import load_stage_config
from pyratok.pipelines.train.strategy import DDPStrategy, state_digest


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def one_step(strategy, video, seed):
    torch.manual_seed(seed)  # the model's masking draws from the global RNG
    strategy.micro_step(video, ["a test pattern"], progress=0.5)
    assert strategy.step()


def test_ddp_strategy_checkpoint_round_trip(tmp_path):
    """Save after 2 steps, take step 3, load the checkpoint back (overwriting model, optimizer and
    schedule), take step 3 again: the same weights and optimizer state as the first time."""
    from pyratok.model import PyraTok

    cfg = load_stage_config("local", 1, ["train.stages.stage1.steps=10", "train.optim.lr=1e-3"])
    model = PyraTok.from_config(cfg.model)
    model.train()
    strategy = DDPStrategy(model, cfg.train, device=torch.device("cpu"), world_size=1)
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    for seed in (1, 2):
        one_step(strategy, video, seed)
    strategy.save(tmp_path, rank=0)
    saved, saved_digest, saved_lr = params(model), strategy.optimizer_digest(), strategy.lr

    one_step(strategy, video, 3)
    after, after_digest = params(model), strategy.optimizer_digest()
    assert after_digest != saved_digest and strategy.lr != saved_lr

    strategy.load(tmp_path)
    assert strategy.optimizer_digest() == saved_digest and strategy.lr == saved_lr
    assert all(torch.equal(p, saved[n]) for n, p in model.named_parameters())
    one_step(strategy, video, 3)
    assert strategy.optimizer_digest() == after_digest
    assert all(torch.equal(p, after[n]) for n, p in model.named_parameters())


def test_state_digest_sees_values_shapes_and_structure():
    base = {"state": {0: {"exp_avg": torch.zeros(3), "step": torch.tensor(2.0)}}, "param_groups": [{"lr": 1e-3}]}
    assert state_digest(base) == state_digest({"param_groups": [{"lr": 1e-3}], "state": {0: {"step": torch.tensor(2.0), "exp_avg": torch.zeros(3)}}})
    changed = {"state": {0: {"exp_avg": torch.tensor([0.0, 0.0, 1e-8]), "step": torch.tensor(2.0)}}, "param_groups": [{"lr": 1e-3}]}
    reshaped = {"state": {0: {"exp_avg": torch.zeros(3, 1), "step": torch.tensor(2.0)}}, "param_groups": [{"lr": 1e-3}]}
    assert len({state_digest(base), state_digest(changed), state_digest(reshaped)}) == 3
