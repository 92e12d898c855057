"""Typed config of the eval stage (the ``eval:`` section of a preset)."""

from __future__ import annotations

from pydantic import Field

from pyratok.core.config import StrictModel


class FvdConfig(StrictModel):
    extractor: str | None = None
    """rFVD's video features: ``i3d:<file>`` (the standard I3D TorchScript, local or s3://: features of its
    ``return_features`` call), ``videomae:<dir | Hub id>`` (transformers VideoMAE, mean of its last hidden
    states), or None (rFVD off)."""
    frames: int = Field(16, ge=1)
    """Frames the extractor sees per clip (the clip's frames resampled to this many)."""
    size: int = Field(224, ge=8)
    """Square side the extractor sees."""


class EvalConfig(StrictModel):
    """What eval measures on and how its Ray Data job runs."""

    frames: int = Field(17, ge=1)
    height: int = Field(256, ge=16)
    width: int = Field(256, ge=16)
    """Each val clip is decoded at this geometry from its first frame (scaled to cover, center-cropped), as the
    training reader does; frames 1+4k and sides multiples of the model's stride."""
    max_clips: int | None = Field(None, ge=1)
    """Evaluate at most this many val clips (the first ones by key); None: all of them."""
    tile: int | None = Field(None, ge=16)
    """Tokenize/decode tiled and time-chunked with this tile (px); None: untiled."""
    vae_ceiling: bool = True
    """Also score the backbone VAE's own continuous reconstruction (encode, decode mu): what quantization costs."""
    untrained_baseline: bool = False
    """Also score the untrained model: the config's ``model`` section built with ``train.seed``, i.e. what the
    pipeline's training starts from (with a random backbone, before ``vae-warmup`` too): the gain training made."""
    retrieval_k: list[int] = Field(default_factory=lambda: [1, 5, 10])
    samples_to_log: int = Field(2, ge=0)
    """Side-by-side original | reconstruction mp4s logged to MLflow (the first clips by key)."""
    after_each_stage: bool = False
    """In a pipeline: also evaluate after train1 and train2 (stages eval1, eval2), not only after train3."""
    fvd: FvdConfig = Field(default_factory=FvdConfig)
    batch_size: int = Field(4, ge=1)
    """Clips per model call in an eval actor."""
    concurrency: int = Field(1, ge=1)
    """Eval actors (one model load each)."""
    num_cpus_per_actor: float = Field(1.0, gt=0)
    num_gpus_per_actor: float = Field(0.0, ge=0)
    decode_num_cpus: float = Field(1.0, gt=0)
    """CPUs of each shard-reading task."""
