"""Video feature extractors for rFVD: the standard I3D TorchScript, or a transformers VideoMAE.

Both take (B, 3, T, H, W) in [-1, 1], resample it to the configured frames and square size, and
return (B, D) float64 features.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pyratok.core.storage import Storage, is_s3

Extractor = Callable[[torch.Tensor], np.ndarray]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resample(video: torch.Tensor, frames: int, size: int) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B, 3, frames, size, size): frames picked evenly (repeated when T < frames), frames resized."""
    b, c, t = video.shape[:3]
    index = torch.linspace(0, t - 1, frames).round().long().to(video.device)
    picked = video.index_select(2, index).transpose(1, 2).flatten(0, 1).float()
    resized = F.interpolate(picked, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized.view(b, frames, c, size, size).transpose(1, 2)


def load_extractor(spec: str, *, frames: int, size: int, storage: Storage | None = None,
                   device: str | torch.device = "cpu") -> Extractor:
    """``i3d:<file>`` or ``videomae:<dir | Hub id>`` -> a feature function (see ``FvdConfig.extractor``)."""
    kind, _, where = str(spec).partition(":")
    storage = storage or Storage()
    if not where:
        raise ValueError(f"eval.fvd.extractor {spec!r}: expected 'i3d:<file>' or 'videomae:<dir or Hub id>'")
    if kind == "i3d":
        return _i3d(where, frames=frames, size=size, storage=storage, device=device)
    if kind == "videomae":
        return _videomae(where, frames=frames, size=size, storage=storage, device=device)
    raise ValueError(f"eval.fvd.extractor {spec!r}: unknown kind {kind!r} (i3d or videomae)")


def _i3d(where: str, *, frames: int, size: int, storage: Storage, device) -> Extractor:
    with storage.local_copy(where) as path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"eval.fvd.extractor: no I3D TorchScript file at {where}")
        model = torch.jit.load(str(path), map_location=device).eval()

    @torch.no_grad()
    def features(video: torch.Tensor) -> np.ndarray:
        x = resample(video.to(device), frames, size)
        # StyleGAN-V's call: the raw features before the logits, input already in [-1, 1] at 224²
        return model(x, rescale=False, resize=False, return_features=True).double().cpu().numpy()

    return features


def _videomae(where: str, *, frames: int, size: int, storage: Storage, device) -> Extractor:
    from transformers import VideoMAEModel

    tmp = None
    if is_s3(where):
        tmp = tempfile.mkdtemp(prefix="pyratok-videomae-")
        where = str(storage.download_dir(where, tmp))
    model = VideoMAEModel.from_pretrained(where).to(device).eval()
    want = (int(model.config.num_frames), int(model.config.image_size))
    if (frames, size) != want:
        raise ValueError(f"eval.fvd: the VideoMAE at {where} takes {want[0]} frames of {want[1]}px; "
                         f"set eval.fvd.frames={want[0]} eval.fvd.size={want[1]}")
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 1, 3, 1, 1)

    @torch.no_grad()
    def features(video: torch.Tensor) -> np.ndarray:
        x = (resample(video.to(device), frames, size).transpose(1, 2) + 1) / 2  # (B, T, 3, s, s) in [0, 1]
        out = model(pixel_values=(x - mean) / std).last_hidden_state
        return out.mean(1).double().cpu().numpy()

    return features
