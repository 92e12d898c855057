"""Typed config of the caption stage (the ``caption:`` section of a preset).

Settings split in two kinds: those that change what a caption says (model,
prompt, sampling, frame sampling, post-processing) and therefore the caption
*version* hash, and execution settings (backend, batch size, actor pool,
dtype) that only change how fast the same captions are produced.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pyratok.core.config import StrictModel

TINY_MODEL = "tiny"
"""``caption.model: tiny`` = the offline tiny Qwen2.5-VL under ``<work_dir>/models``, built if missing."""

ULTRAVIDEO_FIELDS: tuple[str, ...] = (
    "Brief Description", "Detailed Description", "Background", "Theme Description", "Style",
    "Shot Type", "Camera Movement", "Lighting", "Video Atmosphere", "Summarized Description",
)  # fmt: skip

DETAILED_PROMPT = (
    "Describe this video in detail for a video generation dataset. Cover the main subjects and their "
    "appearance, their actions and motion over time, the setting and background, the camera's shot type "
    "and movement, the lighting, colours and visual style. Write one fluent paragraph in the present "
    "tense. Start directly with the content; do not begin with phrases like 'The video shows'."
)

STRUCTURED_PROMPT = (
    "Describe this video for a video generation dataset. Answer with a single JSON object whose keys are "
    "exactly: {fields}. Each value is plain English text; 'Detailed Description' is one fluent paragraph "
    "covering subjects, actions, setting, camera and lighting. Output only the JSON object."
)

DEFAULT_OPENINGS: tuple[str, ...] = (
    r"(?:in )?(?:this|the) (?:video|clip|footage|scene|sequence)(?: clip)? (?:shows|depicts|features|captures|presents|displays|showcases|is showing)(?: us)?",
    r"(?:this|the) (?:video|clip|footage) (?:is )?(?:of|about)",
    r"in (?:this|the) (?:video|clip|footage|scene)",
    r"(?:here )?we (?:see|can see|are shown)",
    r"the (?:image|frames?) (?:shows?|depicts?)",
    r"sure[,!.]? here(?: is|'s) (?:a |the )?(?:detailed )?(?:description|caption)(?: of the video)?",
)  # fmt: skip


class FrameSamplingConfig(StrictModel):
    """Which frames of a clip the model sees, and how large (part of the caption version)."""

    fps: float = Field(2.0, gt=0)
    """Frames sampled per second of clip."""
    min_frames: int = Field(4, ge=1)
    max_frames: int = Field(64, ge=1)
    min_pixels: int = Field(64 * 28 * 28, ge=1)
    """Per-frame lower bound on resized height*width."""
    max_pixels: int = Field(448 * 448, ge=1)
    """Per-frame upper bound on resized height*width; frames are decoded straight to this size."""
    total_pixels: int | None = None
    """Optional budget over all frames of a clip (qwen-vl-utils' VIDEO_TOTAL_PIXELS): long clips get smaller frames."""

    @model_validator(mode="after")
    def _ordered(self) -> "FrameSamplingConfig":
        if self.min_frames > self.max_frames:
            raise ValueError(f"frames.min_frames ({self.min_frames}) > frames.max_frames ({self.max_frames})")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"frames.min_pixels ({self.min_pixels}) > frames.max_pixels ({self.max_pixels})")
        return self


class PromptConfig(StrictModel):
    """What the model is asked (part of the caption version)."""

    template: Literal["detailed", "structured"] = "detailed"
    """``detailed``: one paragraph. ``structured``: UltraVideo-style JSON fields, ``caption_field`` becomes the caption."""
    text: str | None = None
    """Replaces the template's instruction text (``{fields}`` expands to the field list)."""
    system: str | None = "You are a helpful assistant."
    fields: list[str] = Field(default_factory=lambda: list(ULTRAVIDEO_FIELDS))
    caption_field: str = "Detailed Description"

    @model_validator(mode="after")
    def _caption_field_known(self) -> "PromptConfig":
        if self.template == "structured" and self.caption_field not in self.fields:
            raise ValueError(f"prompt.caption_field {self.caption_field!r} is not one of prompt.fields {self.fields}")
        return self


class SamplingConfig(StrictModel):
    """Decoding settings (part of the caption version)."""

    max_new_tokens: int = Field(384, ge=1)
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(50, ge=0)
    repetition_penalty: float = Field(1.05, gt=0)
    seed: int = 0


class PostprocessConfig(StrictModel):
    """Cleaning and rejection of raw generations (part of the caption version)."""

    strip_openings: list[str] = Field(default_factory=lambda: list(DEFAULT_OPENINGS))
    """Case-insensitive regexes removed from the start of a caption (with the punctuation after them)."""
    min_words: int = Field(3, ge=1)
    max_ngram: int = Field(8, ge=1)
    """Longest phrase (in words) checked for back-to-back repetition."""
    max_repeats: int = Field(4, ge=2)
    """A phrase repeated this many times in a row marks a repetition loop."""
    min_distinct_ratio: float = Field(0.25, ge=0, le=1)
    """Distinct word trigrams / all trigrams below this (on >= 30 words) marks a loop too."""


class VllmConfig(StrictModel):
    """Engine settings of the vLLM backend (execution only)."""

    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_model_len: int = 16384
    max_num_seqs: int = 64
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    engine_kwargs: dict = Field(default_factory=dict)


class CaptionConfig(StrictModel):
    """The caption stage: recaption shards with a multimodal LLM into versioned sidecars."""

    model: str | None = None
    """Model dir or ``s3://`` URI (a Qwen2.5-VL checkpoint), or ``tiny`` for the offline tiny model."""
    model_id: str | None = None
    """Identity of the model in the version hash (e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``). None: ``model`` as given."""
    version_name: str | None = None
    """Human name of the caption set (stored in version.json; the train config may select by it)."""
    backend: Literal["auto", "transformers", "vllm"] = "transformers"
    """``auto``: vllm when it is importable and a GPU is visible, else transformers."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """``auto``: bfloat16 on GPU, float32 on CPU."""
    attn_implementation: str | None = "sdpa"
    batch_size: int = Field(8, ge=1)
    """Clips per generate call (one actor)."""
    concurrency: int | tuple[int, int] = 1
    """Captioning actors (each loads the model once); ``[min, max]`` autoscales."""
    num_gpus_per_actor: float = Field(0.0, ge=0)
    num_cpus_per_actor: float = Field(1.0, gt=0)
    decode_num_cpus: float = Field(1.0, gt=0)
    """CPUs per frame-decoding task."""
    decode_memory_mb: int = Field(512, ge=1)
    """Memory reserved per decoding task (one shard's clips, decoded one at a time to small frames)."""
    decode_concurrency: int | None = None
    model_cache_dir: str | None = None
    """Where ``s3://`` models are downloaded. None: ``<work_dir>/model-cache``."""
    samples_to_log: int = Field(32, ge=0)
    """Captions logged to MLflow as an artifact."""
    frames: FrameSamplingConfig = Field(default_factory=FrameSamplingConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    vllm: VllmConfig = Field(default_factory=VllmConfig)
