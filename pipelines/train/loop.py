"""The per-worker training loop that Ray Train runs on every rank.

One loop for both strategies: build the model (fresh, or from the previous
stage's exported tokenizer), wrap it in the strategy, restore the latest
checkpoint if Ray Train hands one over (a recovery after a worker failure, or
``--resume``), then stream batches until the stage's step count. Every
``checkpoint.every_n_steps`` and at the end, every rank writes its part of a
checkpoint and reports it; rank 0 logs metrics and samples to MLflow.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pyratok.core.logging import get_logger
from pyratok.core.storage import Storage

log = get_logger(__name__)


@dataclass
class TrainJob:
    """Everything the workers need, resolved by the driver (picklable)."""

    config: dict
    """The resolved root config (``PyratokConfig.model_dump``) for this stage."""
    stage: int
    run_name: str
    shards: list[str]
    data_root: str
    strategy: str
    caption_version: str | None = None
    init_model_uri: str | None = None
    deepspeed_config: dict | None = None
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    torch_extensions_dir: str | None = None
    progress_bar: bool = False
    """Rank 0 draws a live bar (Ray's tqdm, rendered by the driver): only when the driver's console is a
    terminal. In a log the workers' plain per-``log_every_n_steps`` lines are the progress."""
    extra_meta: dict = field(default_factory=dict)


def to_model_input(video: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> uint8 (B, 3, T, H, W) on the device (a view: no copy).

    It stays uint8: the model converts it to its compute dtype one tile-chunk at a time
    (``model/pixels.py``), a quarter of a bf16 clip's bytes on the GPU and over the bus.
    """
    return video.to(device, non_blocking=True).permute(0, 4, 1, 2, 3)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(job: TrainJob, cfg, storage: Storage):
    from pyratok.model import PyraTok

    if job.init_model_uri:
        from pyratok.model.sources import use_tracking_server_for

        use_tracking_server_for(job.init_model_uri, job.tracking_uri)
        # Architecture and weights from the previous stage; this stage's loss settings on top.
        return PyraTok.from_pretrained(job.init_model_uri, storage=storage, **stage_model_overrides(cfg.model))
    return PyraTok.from_config(cfg.model, storage=storage)


def stage_model_overrides(model_cfg) -> dict:
    """The parts of the model config a stage changes (loss toggles/weights, masking), for from_pretrained."""
    data = model_cfg.model_dump()
    return {k: data[k] for k in ("losses", "masking") if k in data}


def worker_logging() -> None:
    """Our loggers on stderr with the secrets filter, leaving the root logger alone: Ray Train
    routes ``print`` (and so Ray's progress bars) through root, and a formatter there breaks them."""
    import logging
    import sys

    from pyratok.core.secrets import SecretsFilter

    logger = logging.getLogger("pyratok")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler.addFilter(SecretsFilter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(os.environ.get("PYRATOK_LOG_LEVEL", "INFO"))
    quiet_worker_libraries()


def quiet_worker_libraries() -> None:
    """Library INFO lines that would repeat on every rank (Ray forwards them all to the driver).

    Ray Train logs each ``report()`` with its whole metrics dict ("Reporting training result N:
    TrainingReport(...)") through a logger named after its source file, outside ``ray.train``, so
    ``RunConfig(logging_config=...)`` (set by the driver) misses it: raise every such logger to
    WARNING. botocore announces its credentials source once per process."""
    import logging

    import ray.train

    from pyratok.core.logging import quiet_libraries

    ray_train_dir = os.path.dirname(ray.train.__file__) + os.sep
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(ray_train_dir):
            logging.getLogger(name).setLevel(logging.WARNING)
    quiet_libraries()


def worker_device(train, job: TrainJob) -> torch.device:
    """The rank's device; on CPU, torch's intra-op threads capped to the worker's CPU share."""
    if job.torch_extensions_dir:
        os.environ["TORCH_EXTENSIONS_DIR"] = job.torch_extensions_dir
    if train.scaling.use_gpu and torch.cuda.is_available():
        import ray.train.torch

        return ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(train.scaling.cpus_per_worker)))
    return torch.device("cpu")


def restore_checkpoint(checkpoint, strategy, rank: int, train):
    """Strategy state + this rank's progress from a Ray Train checkpoint: (RankState, RNG states)."""
    from pyratok.pipelines.train.checkpoint import RankState, read_rank_state, read_rng

    if checkpoint is None:
        return RankState(step=0, micro_batches=0, loader_workers=train.data.loader_workers), None
    with checkpoint.as_directory() as directory:
        directory = Path(directory)
        strategy.load(directory)
        state = read_rank_state(directory, rank)
        rng = read_rng(directory, rank)
    digest = strategy.optimizer_digest()
    if state.optimizer_digest and digest != state.optimizer_digest:
        raise RuntimeError(
            f"rank {rank}: optimizer state restored from {checkpoint.path} differs from what was saved "
            f"(digest {digest} != {state.optimizer_digest})"
        )
    state.restarts.append(state.step)
    log.info("rank %d: resumed stage %d at step %d/%d from %s", rank, train.stage, state.step, train.current().steps,
             checkpoint.path)  # fmt: skip
    return state, rng


def start_loader(job: TrainJob, cfg, model, state, *, rank: int, world: int, storage: Storage, pin_memory: bool):
    """The rank's batch iterator, continuing where ``state`` says each loader process stood."""
    from pyratok.pipelines.train.data import CaptionSource, LoaderTracker, ReaderSpec, make_loader

    train, stage = cfg.train, cfg.train.current()
    workers = max(1, train.data.loader_workers)
    positions = state.positions if state.loader_workers == train.data.loader_workers else {}
    if state.positions and not positions:
        log.warning("loader processes changed (%d -> %d): the data stream restarts its epoch",
                    state.loader_workers, train.data.loader_workers)  # fmt: skip
    spec = ReaderSpec(
        shards=job.shards,
        storage=storage,
        data=train.data,
        resolution=stage.resolution,
        frames=stage.frames,
        batch_size=stage.batch_size,
        spatial_multiple=int(model.spatial_multiple),
        temporal_multiple=int(model.temporal_multiple),
        seed=train.seed,
        rank=rank,
        world_size=world,
        repeat=True,
        captions=CaptionSource(job.data_root, job.caption_version) if job.caption_version else None,
        start={int(k): v for k, v in positions.items()},
        rotate=state.received % workers if positions else 0,
    )
    tracker = LoaderTracker(positions, state.events, state.received if positions else 0)
    return iter(make_loader(spec, pin_memory=pin_memory)), tracker


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train

    from pyratok.config import PyratokConfig
    from pyratok.pipelines.train.checkpoint import apply_rng
    from pyratok.pipelines.train.strategy import build_strategy

    worker_logging()
    job: TrainJob = loop_config["job"]
    cfg = PyratokConfig.model_validate(job.config)
    train = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = worker_device(train, job)
    storage = Storage(cfg.storage)

    seed_everything(train.seed)  # same initial weights on every rank
    model = build_model(job, cfg, storage)
    model.train()
    strategy = build_strategy(job.strategy, model, train, device=device, world_size=world, ds_config=job.deepspeed_config)
    state, rng = restore_checkpoint(ray.train.get_checkpoint(), strategy, rank, train)
    batches, tracker = start_loader(job, cfg, model, state, rank=rank, world=world, storage=storage,
                                    pin_memory=device.type == "cuda")  # fmt: skip
    # RNG after the loader started (it draws its workers' seeds): an uninterrupted run and a
    # resumed one then draw the same masks from here on.
    seed_everything(train.seed + 1000 * (rank + 1) + state.step)
    if rng is not None:
        apply_rng(rng)
    StageLoop(job=job, cfg=cfg, strategy=strategy, model=model, rank=rank, world=world, device=device).run(
        state, batches, tracker
    )


class StageLoop:
    """Steps, logging cadence and checkpoints of one stage on one rank."""

    def __init__(self, *, job: TrainJob, cfg, strategy, model, rank: int, world: int, device: torch.device):
        from pyratok.pipelines.train.meter import StepMeter
        from pyratok.pipelines.train.worker_tracking import RankZeroTracker

        self.job, self.cfg, self.train = job, cfg, cfg.train
        self.strategy, self.model = strategy, model
        self.rank, self.world, self.device = rank, world, device
        self.total = self.train.current().steps
        self.meter = StepMeter(device)
        self.tracker = RankZeroTracker(job.tracking_uri, job.mlflow_run_id) if rank == 0 else RankZeroTracker(None, None)
        self.last_metrics: dict[str, float] = {}
        self.bar = None

    def _progress_bar(self, initial: int):
        if self.rank != 0 or not self.job.progress_bar:
            return None
        try:
            from ray.experimental.tqdm_ray import tqdm
        except ImportError:  # pragma: no cover - older Ray
            return None
        bar = tqdm(total=self.total, desc=f"stage {self.job.stage}", unit="step")
        if initial:
            bar.update(initial)
        return bar

    def run(self, state, batches, loader) -> None:
        cadence = self.train.tracking
        every = self.train.checkpoint.every_n_steps
        self.bar = self._progress_bar(state.step)
        steps_since_log = 0
        wait_started = time.perf_counter()
        while state.step < self.total:
            batch = next(batches)
            if not loader.observe(batch):
                continue
            waited = time.perf_counter() - wait_started
            video = to_model_input(batch["video"], self.device)
            # the sample image needs the first clip's reconstruction; otherwise the forward never builds one
            sampling = self.rank == 0 and (state.step + 1) % cadence.sample_every_n_steps == 0
            out = self.strategy.micro_step(video, batch["text"], progress=state.step / self.total,
                                           keep_recon="first" if sampling else "none")
            self.meter.add_micro(out, clips=video.shape[0], data_wait=waited)
            state.micro_batches += 1
            stepped = self.strategy.step()
            if stepped:
                state.step += 1
                steps_since_log += 1
                if self.bar is not None:
                    self.bar.update(1)
                if state.step % cadence.log_every_n_steps == 0 or state.step == self.total:
                    self._log(state, loader, steps_since_log)
                    steps_since_log = 0
                if self.rank == 0 and state.step % cadence.sample_every_n_steps == 0:
                    self.tracker.sample(video[0], _first_recon(out), state.step, cadence.sample_frames)
                if state.step % every == 0 or state.step == self.total:
                    self._checkpoint(state, loader, final=state.step == self.total)
            wait_started = time.perf_counter()
        if self.bar is not None:
            self.bar.close()

    def _log(self, state, loader, steps: int) -> None:
        metrics = self.meter.reduce(self.world, steps)  # collective
        metrics["lr"] = self.strategy.lr
        if self.device.type == "cuda":
            metrics["memory/peak_allocated_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.strategy.grad_norm is not None:
            metrics["grad_norm"] = self.strategy.grad_norm
        epochs = [p.get("epoch", 0) for p in loader.positions.values()]
        metrics["data/epoch"] = float(min(epochs)) if epochs else 0.0
        skipped = _all_reduce_counts(loader.skipped(), self.world, self.device)
        for reason, count in skipped.items():
            metrics[f"data/skipped/{reason}"] = float(count)
        for key in _all_gather_keys(loader.corrupt_keys(), self.world):  # which clips, not just how many
            metrics["data/corrupt/" + re.sub(r"[^\w./ -]", "_", key)] = 1.0
        self.last_metrics = metrics
        if self.rank != 0:
            return
        self.tracker.metrics(metrics, state.step)
        log.info(
            "stage %d step %d/%d loss %.4f lr %.2e clips/s %.2f tokens/s %.0f",
            self.job.stage, state.step, self.total, metrics.get("loss", float("nan")), metrics["lr"],
            metrics["throughput/clips_per_s"], metrics["throughput/tokens_per_s"],
        )  # fmt: skip
        if self.bar is not None:
            self.bar.set_description(
                f"stage {self.job.stage} loss {metrics.get('loss', float('nan')):.4f} clips/s {metrics['throughput/clips_per_s']:.2f}"
            )

    def _checkpoint(self, state, loader, *, final: bool) -> None:
        import ray.train

        from pyratok.pipelines.train.checkpoint import MODEL_DIR, write_meta, write_rank_state

        directory = Path(tempfile.mkdtemp(prefix=f"pyratok-ckpt-r{self.rank}-"))
        try:
            self.strategy.save(directory, self.rank)  # collective for DeepSpeed
            state.positions = {str(k): v for k, v in loader.positions.items()}
            state.received = loader.received
            state.events = dict(loader.events)
            state.optimizer_digest = self.strategy.optimizer_digest()
            write_rank_state(directory, self.rank, state)
            if self.train.checkpoint.export_model or final:
                with self.strategy.full_weights():  # collective under ZeRO-3
                    if self.rank == 0:
                        self.model.save_pretrained(str(directory / MODEL_DIR))
            if self.rank == 0:
                write_meta(
                    directory,
                    {
                        "stage": self.job.stage, "step": state.step, "steps": self.total, "final": final,
                        "strategy": self.strategy.name, "world_size": self.world, "run_name": self.job.run_name,
                        "mlflow_run_id": self.job.mlflow_run_id, "data": self.job.data_root,
                        "caption_version": self.job.caption_version, "init_model_uri": self.job.init_model_uri,
                        "restarts": state.restarts, "time": time.time(), **self.job.extra_meta,
                    },
                )  # fmt: skip
            metrics = {"step": state.step, **{k: v for k, v in self.last_metrics.items()}}
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
                checkpoint_dir_name=f"checkpoint_step{state.step:07d}",
            )
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def _first_recon(out) -> torch.Tensor | None:
    recon = getattr(out, "recon", None)
    return recon[0] if recon is not None else None


def _all_gather_keys(keys: list[str], world: int) -> list[str]:
    """The union of every rank's keys (a collective: every rank calls it at the same step)."""
    import torch.distributed as dist

    if world > 1 and dist.is_initialized():
        gathered: list[list[str] | None] = [None] * world
        dist.all_gather_object(gathered, keys)
        return sorted({k for part in gathered for k in part or []})
    return sorted(keys)


def _all_reduce_counts(counts: dict[str, int], world: int, device: torch.device) -> dict[str, int]:
    """Sum skip counters over ranks; every rank must pass the same reason names, so use a fixed list."""
    import torch.distributed as dist

    from pyratok.pipelines.train.data import SKIP_REASONS

    flat = torch.tensor([counts.get(r, 0) for r in SKIP_REASONS], dtype=torch.float64, device=device)
    if world > 1 and dist.is_initialized():
        dist.all_reduce(flat)
    return {r: int(v) for r, v in zip(SKIP_REASONS, flat.tolist())}
