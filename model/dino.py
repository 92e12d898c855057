"""Frozen DINO (DINOv3 by default, DINOv2 selectable) for the stage-3 retention loss.

Frames are resized and ImageNet-normalized in torch (no torchvision). Weights
come from ``from_pretrained`` on a local dir / s3:// prefix, or are random from
a small config (tests and the embedded default, where only the plumbing and
the gradient path matter).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from pyratok.model.config import DinoConfig
from pyratok.model.sources import local_dir, resolve

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_random_dino(kind: str, arch: dict, seed: int = 0) -> nn.Module:
    from transformers import Dinov2Config, Dinov2Model, DINOv3ViTConfig, DINOv3ViTModel

    config_cls, model_cls = (DINOv3ViTConfig, DINOv3ViTModel) if kind == "dinov3" else (Dinov2Config, Dinov2Model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(config_cls(**arch))


def sample_frames(frames: int, count: int) -> torch.Tensor:
    """Evenly spaced frame indices, always including frame 0."""
    return torch.linspace(0, frames - 1, min(count, frames)).round().long().unique()


class DinoEncoder(nn.Module):
    def __init__(self, *, model: nn.Module, image_size: int, features: str = "cls", max_frames: int = 8):
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        self.model.eval()
        self.image_size = image_size
        self.features = features
        self.max_frames = max_frames
        self.skip_tokens = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg: DinoConfig, *, storage=None, cache_dir=None, base_dir=None) -> "DinoEncoder":
        if cfg.path is None:
            if not cfg.allow_random:
                raise ValueError(
                    "model.dino.path is not set, so the DINO retention loss (losses.dino, stage 3) would compare "
                    "against a random ViT; point model.dino.path at DINOv3 weights (a local HF folder or s3:// "
                    "prefix), or set model.dino.allow_random: true (tests and the tiny embedded default only)"
                )
            # the config opted in (allow_random, recorded in every run's config.yaml): no warning per rank
            log.debug("DINO retention runs against a RANDOM %s (model.dino.allow_random)", cfg.kind)
            model = build_random_dino(cfg.kind, cfg.arch, cfg.init_seed)
        else:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(str(local_dir(resolve(cfg.path, base_dir), storage=storage, cache_dir=cache_dir)))
        return cls(model=model, image_size=cfg.image_size, features=cfg.features, max_frames=cfg.max_frames)

    def train(self, mode: bool = True) -> "DinoEncoder":
        return super().train(False)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> resized (short side = image_size, centre crop), ImageNet-normalized."""
        h, w = frames.shape[-2:]
        scale = self.image_size / min(h, w)
        size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
        x = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        x = x[..., top : top + self.image_size, left : left + self.image_size]
        return ((x + 1) / 2 - self.mean) / self.std

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, D) CLS embeddings or (N, P, D) patch embeddings."""
        out = self.model(pixel_values=self.preprocess(frames).to(next(self.model.parameters()).dtype))
        if self.features == "cls":
            return out.pooler_output.float()
        return out.last_hidden_state[:, self.skip_tokens :].float()

    def patch_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, P, D) patch tokens, whatever ``features`` says (the drift anchor's target)."""
        out = self.model(pixel_values=self.preprocess(frames).to(next(self.model.parameters()).dtype))
        return out.last_hidden_state[:, self.skip_tokens :].float()

    def video_features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> features of the sampled frames, flattened over (B, frames)."""
        idx = sample_frames(video.shape[2], self.max_frames).to(video.device)
        frames = video.index_select(2, idx).transpose(1, 2).flatten(0, 1)
        return self(frames)
