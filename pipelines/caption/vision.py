"""Video preprocessing for Qwen2.5-VL in plain torch: frames -> ``pixel_values_videos`` + ``video_grid_thw``.

Transformers' Qwen2-VL video processor imports torchvision, which we do not
install, so the patch layout is reproduced here. The resize itself happens at
decode time (PyAV scales each frame straight to the target size, see
``frames.py``), so this module only normalizes and patchifies. The geometry
(patch, merge and temporal patch sizes, mean/std) comes from the checkpoint's
own ``config.json`` / ``preprocessor_config.json``, as the HF processor would
read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyratok.pipelines.caption.config import FrameSamplingConfig

PREPROCESSOR_CONFIG = "preprocessor_config.json"
VIDEO_PREPROCESSOR_CONFIG = "video_preprocessor_config.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionSpec:
    """The vision tower's input geometry and pixel statistics."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    @property
    def factor(self) -> int:
        """Frame sides must be multiples of this (one merged token covers factor x factor pixels)."""
        return self.patch_size * self.merge_size

    def num_video_tokens(self, grid_thw: tuple[int, int, int] | torch.Tensor) -> int:
        """Placeholder tokens the language model sees for one video of this grid."""
        t, h, w = (int(v) for v in grid_thw)
        return t * h * w // (self.merge_size**2)

    @classmethod
    def from_checkpoint_configs(cls, model_config: dict, preprocessor: dict, where: str = "model") -> "VisionSpec":
        """The spec from a checkpoint's config.json and preprocessor_config.json (the model config wins on sizes)."""
        vision = model_config.get("vision_config", {}) or {}
        spec = cls(
            patch_size=int(vision.get("patch_size", preprocessor.get("patch_size", 14))),
            temporal_patch_size=int(vision.get("temporal_patch_size", preprocessor.get("temporal_patch_size", 2))),
            merge_size=int(vision.get("spatial_merge_size", preprocessor.get("merge_size", 2))),
            image_mean=tuple(preprocessor.get("image_mean", CLIP_MEAN)),
            image_std=tuple(preprocessor.get("image_std", CLIP_STD)),
        )
        for key, value in (("patch_size", spec.patch_size), ("temporal_patch_size", spec.temporal_patch_size),
                           ("merge_size", spec.merge_size)):  # fmt: skip
            if key in preprocessor and int(preprocessor[key]) != value:
                raise ValueError(f"{where}: {PREPROCESSOR_CONFIG} says {key}={preprocessor[key]} but config.json says {value}")
        return spec

    @classmethod
    def from_storage(cls, storage, location: str) -> "VisionSpec":
        """Read the spec from a checkpoint dir or ``s3://`` prefix without loading the model."""
        from pyratok.core.storage import join

        model_config = storage.read_json(join(location, "config.json"))
        preprocessor: dict = {}
        for name in (VIDEO_PREPROCESSOR_CONFIG, PREPROCESSOR_CONFIG):
            uri = join(location, name)
            if storage.exists(uri):
                preprocessor = storage.read_json(uri)
                break
        return cls.from_checkpoint_configs(model_config, preprocessor, where=location)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> "VisionSpec":
        from pyratok.core.storage import Storage

        return cls.from_storage(Storage(), str(model_dir))


def smart_resize(height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, area in [min, max], aspect kept.

    Qwen's own rule (transformers' ``qwen2_vl`` ``smart_resize``; a test pins the two
    together). Kept here so frame-decoding workers need not import transformers.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f}:1 is over Qwen's 200:1 limit")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def frame_budget(num_frames: int, spec: VisionSpec, frames: FrameSamplingConfig) -> tuple[int, int]:
    """Per-frame (min_pixels, max_pixels) for a clip of ``num_frames`` sampled frames.

    With ``total_pixels`` set, a long clip shares one pixel budget across its frames
    (qwen-vl-utils' rule), floored just above ``min_pixels``.
    """
    max_pixels = frames.max_pixels
    if frames.total_pixels:
        share = frames.total_pixels / max(num_frames, 1) * spec.temporal_patch_size
        max_pixels = max(min(max_pixels, int(share)), int(frames.min_pixels * 1.05))
    return frames.min_pixels, max_pixels


def target_size(height: int, width: int, num_frames: int, spec: VisionSpec, frames: FrameSamplingConfig) -> tuple[int, int]:
    """The (height, width) every sampled frame of a clip is decoded to."""
    min_pixels, max_pixels = frame_budget(num_frames, spec, frames)
    return smart_resize(height, width, factor=spec.factor, min_pixels=min_pixels, max_pixels=max_pixels)


def video_to_patches(frames: np.ndarray | torch.Tensor, spec: VisionSpec) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(T, H, W, 3) uint8 frames already at a valid size -> (flat patches, (grid_t, grid_h, grid_w)).

    Rows of the patch matrix follow the vision tower's order: time group, then
    merge windows row-major, then the 2x2 patches inside a window; each row is
    (channel, temporal, patch_y, patch_x) flattened, as the Conv3d patch embed expects.
    """
    video = torch.as_tensor(frames)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected frames shaped (T, H, W, 3), got {tuple(video.shape)}")
    t, h, w, c = video.shape
    if h % spec.factor or w % spec.factor:
        raise ValueError(f"frame size {h}x{w} is not a multiple of {spec.factor} (patch {spec.patch_size} x merge {spec.merge_size})")
    if t == 0:
        raise ValueError("no frames")
    mean = torch.tensor(spec.image_mean, dtype=torch.float32)
    std = torch.tensor(spec.image_std, dtype=torch.float32)
    video = (video.to(torch.float32) / 255.0 - mean) / std
    video = video.permute(0, 3, 1, 2)  # T, C, H, W
    if pad := -t % spec.temporal_patch_size:
        # Same as the HF processor: repeat the last frame to fill the last temporal patch.
        video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)], dim=0)
        t += pad
    p, m, tp = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    grid_t, grid_h, grid_w = t // tp, h // p, w // p
    patches = video.reshape(grid_t, tp, c, grid_h // m, m, p, grid_w // m, m, p)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, c * tp * p * p).contiguous()
    return flat, (grid_t, grid_h, grid_w)


def seconds_per_grid(sample_fps: float, spec: VisionSpec) -> float:
    """Seconds covered by one temporal grid step (drives the temporal rope spacing)."""
    return spec.temporal_patch_size / sample_fps if sample_fps > 0 and math.isfinite(sample_fps) else 1.0
