"""Typed config of the training stage (the ``train:`` section of a preset).

A preset describes the *scale* of training (workers, per-stage steps, batch
sizes, resolution and frame ranges); a stage overlay (``configs/stage{1,2,3}.yaml``,
applied by ``pyratok train --stage N`` over the preset) describes *what* a stage
trains (the model's loss toggles and ``train.stage``). Defaults are the paper's
values (section 5 of DESIGN.md); ``configs/local.yaml`` shrinks them.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pyratok.core.config import StrictModel

StageNumber = Literal[1, 2, 3]
STAGES: tuple[int, ...] = (1, 2, 3)
PAPER_ASPECT_RATIOS = ["1:1", "4:3", "3:2", "16:9", "2:1"]


class ScalingSection(StrictModel):
    """How many Ray Train workers, and what each one holds."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs reserved per worker (its dataloader processes run inside this budget)."""
    resources_per_worker: dict[str, float] = {}
    """Extra custom resources per worker (e.g. ``{"A100": 1}``); GPU comes from ``use_gpu``."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


class ResolutionRange(StrictModel):
    """Multi-resolution sampling: each batch draws a side from ``min_side..max_side`` (every ``step``).

    The side is the square-equivalent size ``sqrt(H*W)``: a batch in the 16:9 bucket at
    side 512 is about 683x384, so every aspect ratio costs about the same per clip.
    """

    min_side: int = Field(512, ge=8)
    max_side: int = Field(2048, ge=8)
    step: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "ResolutionRange":
        if self.max_side < self.min_side:
            raise ValueError(f"resolution.max_side ({self.max_side}) < min_side ({self.min_side})")
        return self

    def sides(self) -> list[int]:
        return inclusive_range(self.min_side, self.max_side, self.step)


class FrameRange(StrictModel):
    """Clip lengths: ``1 + 4k`` frames (the causal VAE's first frame + groups of 4)."""

    min: int = Field(17, ge=1)
    max: int = Field(97, ge=1)
    step: int = Field(16, ge=4)
    """Spacing of the lengths drawn (a multiple of 4): 17, 33, 49, ... with the paper's 16."""

    @model_validator(mode="after")
    def _valid(self) -> "FrameRange":
        for name in ("min", "max"):
            value = getattr(self, name)
            if (value - 1) % 4:
                raise ValueError(f"frames.{name}={value} is not 1+4k (e.g. 17, 33, 97)")
        if self.step % 4:
            raise ValueError(f"frames.step={self.step} must be a multiple of 4")
        if self.max < self.min:
            raise ValueError(f"frames.max ({self.max}) < frames.min ({self.min})")
        return self

    def choices(self) -> list[int]:
        return inclusive_range(self.min, self.max, self.step)


class StageSection(StrictModel):
    """The scale of one stage: how long, how big a batch, which sizes."""

    steps: int = Field(ge=1)
    """Optimizer steps (after gradient accumulation)."""
    batch_size: int = Field(4, ge=1)
    """Clips per worker per micro-batch."""
    grad_accum: int | None = Field(None, ge=1)
    """Micro-batches per optimizer step in this stage (None: ``optim.grad_accum``). The paper preset trains
    its largest geometries at micro-batch 1 x 4 (stage 3: 1 x 2): the same clips per step, in memory."""
    resolution: ResolutionRange = Field(default_factory=ResolutionRange)
    frames: FrameRange = Field(default_factory=FrameRange)
    warmup_steps: int | None = None
    """None: ``schedule.warmup_ratio`` of ``steps``."""
    lr: float | None = Field(None, gt=0)
    """Peak learning rate of this stage (None: ``optim.lr``): a later stage that fine-tunes what an
    earlier one learned may want a gentler one."""


class StageTable(StrictModel):
    """Per-stage scale (paper values by default). Named fields, so ``-s train.stages.stage1.steps=5`` works."""

    stage1: StageSection = Field(default_factory=lambda: StageSection(steps=30_000, batch_size=4))
    stage2: StageSection = Field(default_factory=lambda: StageSection(steps=60_000, batch_size=4))
    stage3: StageSection = Field(
        default_factory=lambda: StageSection(
            steps=180_000, batch_size=2, resolution=ResolutionRange(min_side=128, max_side=4096, step=128)
        )
    )

    def of(self, stage: int) -> StageSection:
        return getattr(self, f"stage{stage}")


class DataSection(StrictModel):
    """The streaming WebDataset reader."""

    aspect_ratios: list[str] = Field(default_factory=lambda: list(PAPER_ASPECT_RATIOS))
    """Landscape buckets ``W:H``; portrait clips use the transposed buckets when ``portrait`` is on."""
    portrait: bool = True
    upscale: bool = True
    """Allow drawing a side larger than a batch's smallest clip (False: cap at the clip's own size)."""
    max_voxels_per_batch: int | None = Field(None, ge=1)
    """Cap on batch x T x H x W per micro-batch (activation memory is linear in it; see
    infra/training/README.md). Draws that exceed it take a smaller side, then fewer frames. None: no cap."""
    frame_stride: int = Field(1, ge=1)
    """Take every n-th frame (1 = native frame rate)."""
    shuffle_buffer: int = Field(256, ge=1)
    """Encoded samples held per loader process for shuffling (bytes, not decoded frames)."""
    shuffle_initial: int = Field(64, ge=1)
    loader_workers: int = Field(2, ge=0)
    """DataLoader processes per Ray Train worker (each decodes its own share of the shards)."""
    prefetch_batches: int = Field(2, ge=1)
    """Batches each loader process keeps ready."""
    source_caption: Literal["txt", "json"] = "txt"
    """Caption when no caption version is chosen: ``<key>.txt``, or the json ``caption`` field."""

    @field_validator("aspect_ratios")
    @classmethod
    def _ratios(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("data.aspect_ratios must name at least one ratio")
        for text in value:
            parse_ratio(text)
        return value


class OptimSection(StrictModel):
    """AdamW (the paper's optimizer) with gradient accumulation and clipping."""

    lr: float = Field(1e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = Field(0.01, ge=0)
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step (constant across stages, as in the paper)."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Max global gradient norm (None: no clipping)."""


class ScheduleSection(StrictModel):
    """Learning-rate schedule: linear warmup, then cosine annealing to ``min_lr_ratio * lr``."""

    kind: Literal["cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(0.01, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class StrategySection(StrictModel):
    """How workers train together: DeepSpeed ZeRO (default) or plain torch DDP."""

    name: Literal["deepspeed", "ddp"] = "deepspeed"
    deepspeed_config: str = "infra/deepspeed/zero2-bf16.json"
    """A DeepSpeed JSON (ZeRO stage, precision, communication); absolute, relative to the working
    directory, or relative to the repo root. Batch, accumulation, clipping and the optimizer are
    filled in from this config, so one JSON serves every stage."""
    deepspeed_overrides: dict = {}
    """Merged over the JSON, e.g. ``{zero_optimization: {stage: 3}}``."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """DDP: bf16 autocast or fp32 (auto: bf16 on GPU, fp32 on CPU). DeepSpeed: taken from its JSON
    unless set here (bf16 needs a GPU to be worth it)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend (auto: nccl with GPUs, gloo on CPU)."""
    find_unused_parameters: bool = True
    """DDP: parameters of switched-off loss heads get no gradient; DDP must be told."""
    torch_extensions_dir: str | None = None
    """Cache for DeepSpeed's compiled ops, shared by runs so only the first pays the ~30 s build.
    None: ``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/pyratok/torch_extensions``."""


class CheckpointSection(StrictModel):
    storage_path: str | None = None
    """Where Ray Train keeps runs and checkpoints (local dir or s3://). None: ``<work_dir>/checkpoints``."""
    every_n_steps: int = Field(1000, ge=1)
    num_to_keep: int | None = Field(3, ge=1)
    """Checkpoints kept per run (the final one is always the latest)."""
    export_model: bool = True
    """Write the tokenizer (``save_pretrained``) into every checkpoint, so any checkpoint can seed a stage."""


class TrackingCadence(StrictModel):
    """What rank 0 logs to MLflow, and how often."""

    log_every_n_steps: int = Field(10, ge=1)
    sample_every_n_steps: int = Field(500, ge=1)
    """Input/reconstruction frame grids as the run's ``samples`` image series (``log_image(key=, step=)``)."""
    sample_frames: int = Field(4, ge=1)
    log_model: bool = True
    """Log the exported tokenizer of the final checkpoint as run artifacts (``model/``)."""
    progress_bar: bool = True
    """A live step bar on the driver's terminal (never in a log: there the per-log-step lines show progress)."""


class FailureSection(StrictModel):
    max_failures: int = Field(3, ge=-1)
    """Worker-group restarts Ray Train attempts (from the last checkpoint); -1: unlimited."""


class VaeWarmupSection(StrictModel):
    """A short plain-autoencoder training of a *random* backbone VAE before stage 1 (stage ``vae-warmup``).

    Only for presets without VAE weights (the embedded default's tiny random Wan VAE): PyraTok keeps its
    VAE frozen, and a random frozen encoder carries too little of the clip for anything on top of it to
    learn (val PSNR stays ~8-9 dB). A real preset loads the pretrained Wan VAE and leaves this off.
    """

    steps: int = Field(0, ge=0)
    """0: off."""
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(4, ge=1)
    frames: list[int] = Field(default_factory=lambda: [5, 9])
    sides: list[int] = Field(default_factory=lambda: [32, 48])
    """Each step draws its frames and its height and width from these: the VAE's mid-block attention spans the
    frame, so a VAE warmed up at one size does not reconstruct at another (use the training stages' sizes)."""
    max_clips: int = Field(256, ge=1)
    windows: int = Field(4, ge=1)
    """Consecutive windows of ``max(frames)`` taken from each clip (fewer when it is shorter)."""
    num_cpus: float = Field(2.0, gt=0)
    """CPUs of the Ray task that trains it (its torch threads)."""


class TrainConfig(StrictModel):
    stage: StageNumber | None = None
    """Set by the stage overlay; None until a stage is chosen."""
    stage_presets: dict[str, str] = Field(
        default_factory=lambda: {f"stage{n}": f"stage{n}.yaml" for n in STAGES}
    )
    """Overlay preset per stage (path or name in configs/), applied over the --config preset."""
    stages: StageTable = Field(default_factory=StageTable)
    seed: int = 0
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    strategy: StrategySection = Field(default_factory=StrategySection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    tracking: TrackingCadence = Field(default_factory=TrackingCadence)
    failure: FailureSection = Field(default_factory=FailureSection)
    vae_warmup: VaeWarmupSection = Field(default_factory=VaeWarmupSection)

    def current(self) -> StageSection:
        if self.stage is None:
            raise ValueError("train.stage is not set: resolve the config for a stage first (--stage N)")
        return self.stages.of(self.stage)

    def warmup_steps(self) -> int:
        stage = self.current()
        if stage.warmup_steps is not None:
            return stage.warmup_steps
        return int(math.ceil(self.schedule.warmup_ratio * stage.steps))


def inclusive_range(low: int, high: int, step: int) -> list[int]:
    """``low, low+step, ...`` up to ``high``, with ``high`` itself always included."""
    out = list(range(low, high + 1, step))
    return out if out[-1] == high else [*out, high]


def parse_ratio(text: str) -> float:
    """``"16:9"`` -> 1.777... (width / height)."""
    try:
        width, height = (float(part) for part in str(text).split(":"))
    except ValueError:
        raise ValueError(f"aspect ratio {text!r} must look like W:H, e.g. 16:9") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"aspect ratio {text!r} must be positive")
    return width / height
