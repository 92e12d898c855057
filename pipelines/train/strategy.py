"""How the workers train together: DeepSpeed ZeRO or plain torch DDP, behind one small interface.

Both run AdamW with the same warmup+cosine schedule, gradient accumulation
and clipping from the ``train:`` config, so switching ``--strategy`` changes
the distribution machinery, not the optimisation. A strategy also owns the
format of its optimizer state in a checkpoint (DeepSpeed: every rank writes its
ZeRO partition; DDP: rank 0 writes the replicated state).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch

from pyratok.core.config import deep_merge
from pyratok.core.logging import get_logger, library_prints
from pyratok.pipelines.train.config import TrainConfig

log = get_logger(__name__)

STATE_DIR = "state"
DS_TAG = "zero"
AUTO = "auto"


# -- schedule ---------------------------------------------------------------
def lr_lambda(train: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step ``n``: linear warmup, then cosine to ``min_lr_ratio``."""
    total = train.current().steps
    warmup = train.warmup_steps()
    floor = train.schedule.min_lr_ratio
    kind = train.schedule.kind

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train))


# -- state digests ----------------------------------------------------------
def state_digest(state: Any) -> str:
    """Stable hash of a (nested) optimizer state: proves a restore reproduced what was saved."""
    sha = hashlib.sha256()

    def walk(node: Any) -> None:
        if isinstance(node, torch.Tensor):
            tensor = node.detach().to("cpu").contiguous()
            sha.update(f"T{tuple(tensor.shape)}{tensor.dtype}".encode())
            sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(node, dict):
            for key in sorted(node, key=str):
                sha.update(f"K{key}".encode())
                walk(node[key])
        elif isinstance(node, (list, tuple)):
            sha.update(f"L{len(node)}".encode())
            for item in node:
                walk(item)
        else:
            sha.update(f"V{node!r}".encode())

    walk(state)
    return sha.hexdigest()[:32]


# -- DeepSpeed config -------------------------------------------------------
SHIPPED_PREFIX = "infra/deepspeed/"


def resolve_deepspeed_json(path: str) -> Path:
    """A DeepSpeed JSON given absolute or relative to the working directory; ``infra/deepspeed/<name>``
    (how the presets name them) is also the copy shipped in the package, from any working directory."""
    from pyratok.core.config import shipped_dir

    candidate = Path(path).expanduser()
    shipped = shipped_dir("pyratok.deepspeed_configs")
    options = [candidate]
    if path.startswith(SHIPPED_PREFIX) or "/" not in path:
        options.append(shipped / candidate.name)
    for option in options:
        if option.is_file():
            return option.resolve()
    raise FileNotFoundError(f"DeepSpeed config {path!r} not found (looked in {Path.cwd()} and {shipped})")


def load_deepspeed_config(train: TrainConfig) -> dict:
    """The JSON named by ``train.strategy`` merged with its overrides (done on the driver: workers get a dict)."""
    raw = json.loads(resolve_deepspeed_json(train.strategy.deepspeed_config).read_text())
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    return deep_merge(raw, train.strategy.deepspeed_overrides)


def fill_deepspeed_config(raw: dict, train: TrainConfig, *, use_gpu: bool) -> dict:
    """Replace ``auto`` values with the train config's batch, accumulation, clipping and AdamW settings."""
    cfg = copy.deepcopy(raw)
    optim = train.optim
    values = {
        "train_micro_batch_size_per_gpu": train.current().batch_size,
        "gradient_accumulation_steps": train.current().grad_accum or optim.grad_accum,
        "gradient_clipping": optim.grad_clip or 0.0,
    }
    for key, value in values.items():
        if cfg.get(key, AUTO) == AUTO:
            cfg[key] = value
    cfg.pop("train_batch_size", None)  # derived by DeepSpeed from micro x accum x world
    opt = cfg.setdefault("optimizer", {"type": "AdamW", "params": {}})
    params = opt.setdefault("params", {})
    for key, value in {"lr": train.current().lr or optim.lr, "betas": list(optim.betas), "eps": optim.eps, "weight_decay": optim.weight_decay}.items():
        if params.get(key, AUTO) == AUTO:
            params[key] = value
    params.setdefault("torch_adam", True)
    precision = train.strategy.precision
    if precision != "auto":
        cfg.setdefault("bf16", {})["enabled"] = precision == "bf16"
    if not use_gpu and cfg.get("bf16", {}).get("enabled"):
        log.warning("bf16 requested on CPU workers: DeepSpeed will run it, slowly")
    cfg.setdefault("steps_per_print", 10**9)
    return cfg


# -- strategies -------------------------------------------------------------
class Strategy:
    """Forward+backward of one micro-batch, optimizer steps, checkpoint state, export."""

    name = "?"

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.module = module
        self.device = device
        self.grad_norm: float | None = None

    def micro_step(self, video: torch.Tensor, text: list[str], progress: float, keep_recon: str = "none") -> Any:
        raise NotImplementedError

    def step(self) -> bool:
        """Finish a micro-batch; True when it completed an optimizer step."""
        raise NotImplementedError

    @property
    def lr(self) -> float:
        raise NotImplementedError

    def optimizer_digest(self) -> str:
        raise NotImplementedError

    def save(self, directory: Path, rank: int) -> None:
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def full_weights(self):
        """Collective: inside, ``self.module`` holds full fp32 trainable weights (for export)."""
        yield


class DDPStrategy(Strategy):
    name = "ddp"

    def __init__(self, model: torch.nn.Module, train: TrainConfig, *, device: torch.device, world_size: int):
        super().__init__(model, device)
        precision = train.strategy.precision
        self.autocast = device.type == "cuda" and precision in ("auto", "bf16")
        self.trainable = [p for p in model.trainable_parameters()]
        self.frozen_names = {n for n, p in model.named_parameters() if not p.requires_grad}
        if world_size > 1:
            import ray.train.torch

            self.wrapped = ray.train.torch.prepare_model(
                model,
                move_to_device=device,
                parallel_strategy="ddp",
                parallel_strategy_kwargs={"find_unused_parameters": train.strategy.find_unused_parameters},
            )
        else:  # one process (or outside Ray Train): nothing to synchronise
            self.wrapped = model.to(device)
        optim = train.optim
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=train.current().lr or optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
        )
        self.scheduler = make_scheduler(self.optimizer, train)
        self.accum = train.current().grad_accum or optim.grad_accum
        self.clip = optim.grad_clip
        self.micro = 0

    def micro_step(self, video, text, progress, keep_recon="none"):
        boundary = (self.micro + 1) % self.accum == 0
        sync = contextlib.nullcontext() if boundary or not hasattr(self.wrapped, "no_sync") else self.wrapped.no_sync()
        cast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with sync:
            with cast:
                out = self.wrapped(video, text, progress=progress, keep_recon=keep_recon)
            (out.loss / self.accum).backward()
        return out

    def step(self) -> bool:
        self.micro += 1
        if self.micro % self.accum:
            return False
        if self.clip:
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, self.clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def optimizer_digest(self) -> str:
        return state_digest(self.optimizer.state_dict())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.module.state_dict().items() if k not in self.frozen_names}

    def save(self, directory: Path, rank: int) -> None:
        if rank != 0:  # replicated: one copy is the state
            return
        target = directory / STATE_DIR
        target.mkdir(parents=True, exist_ok=True)
        torch.save(self.trainable_state(), target / "trainable.pt")
        torch.save(self.optimizer.state_dict(), target / "optimizer.pt")
        torch.save({"scheduler": self.scheduler.state_dict(), "micro": self.micro}, target / "scheduler.pt")

    def load(self, directory: Path) -> None:
        source = directory / STATE_DIR
        state = torch.load(source / "trainable.pt", map_location=self.device, weights_only=True)
        missing, unexpected = self.module.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in self.frozen_names]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint {directory} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.optimizer.load_state_dict(torch.load(source / "optimizer.pt", map_location=self.device, weights_only=True))
        sched = torch.load(source / "scheduler.pt", weights_only=True)
        self.scheduler.load_state_dict(sched["scheduler"])
        self.micro = int(sched["micro"])


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"

    def __init__(self, model: torch.nn.Module, train: TrainConfig, *, ds_config: dict, device: torch.device):
        super().__init__(model, device)
        import deepspeed

        self.ds_config = ds_config
        trainable = [p for p in model.trainable_parameters()]
        with library_prints():
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model,
                model_parameters=trainable,
                config=ds_config,
                lr_scheduler=lambda opt: make_scheduler(opt, train),
            )
        self.trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]

    def micro_step(self, video, text, progress, keep_recon="none"):
        out = self.engine(video, text, progress=progress, keep_recon=keep_recon)
        self.engine.backward(out.loss)
        return out

    def step(self) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if boundary:
            norm = self.engine.get_global_grad_norm()
            self.grad_norm = float(norm) if norm is not None else None
        return boundary

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def optimizer_digest(self) -> str:
        return state_digest(self.optimizer.state_dict())

    def save(self, directory: Path, rank: int) -> None:
        # Collective: each rank writes its own ZeRO partition files; Ray merges the ranks' folders.
        self.engine.save_checkpoint(str(directory / STATE_DIR), tag=DS_TAG, exclude_frozen_parameters=True)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory / STATE_DIR), tag=DS_TAG, load_module_strict=False,
            load_optimizer_states=True, load_lr_scheduler_states=True,
        )  # fmt: skip
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {directory / STATE_DIR}")

    @contextlib.contextmanager
    def full_weights(self):
        """Swap each trainable parameter for its full fp32 master copy (ZeRO-2/3 aware), then restore."""
        from deepspeed.utils import safe_get_full_fp32_param

        params = dict(self.module.named_parameters())
        saved = {}
        for name in self.trainable_names:
            param = params[name]
            full = safe_get_full_fp32_param(param)  # collective under ZeRO-3
            if full is not None:
                saved[name] = param.data
                param.data = full.detach().to("cpu", torch.float32).view(param.ds_shape if hasattr(param, "ds_shape") else full.shape)
        try:
            yield
        finally:
            for name, data in saved.items():
                params[name].data = data


def build_strategy(
    name: str,
    model: torch.nn.Module,
    train: TrainConfig,
    *,
    device: torch.device,
    world_size: int,
    ds_config: dict | None,
) -> Strategy:
    if name == "deepspeed":
        if ds_config is None:
            raise ValueError("strategy deepspeed needs a DeepSpeed config")
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
        return DeepSpeedStrategy(model, train, ds_config=ds_config, device=device)
    if name == "ddp":
        return DDPStrategy(model, train, device=device, world_size=world_size)
    raise ValueError(f"unknown strategy {name!r} (deepspeed or ddp)")
