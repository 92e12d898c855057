"""Shared tiny PyraTok models (built once per session: loading the MiniLM text encoder costs seconds)."""

from __future__ import annotations

import warnings

import pytest
import torch

from pyratok.model.presets import tiny


def build(kind: str = "wan2.2", **overrides):
    from pyratok.core.config import deep_merge
    from pyratok.model.config import ModelConfig
    from pyratok.model.tokenizer import PyraTok

    # 1 latent frame per chunk: the tests' small clips would run as one region under time_chunk "auto"
    base = deep_merge(tiny(kind).model_dump(), {"tiling": {"time_chunk": 1}})
    cfg = ModelConfig.model_validate(deep_merge(base, overrides))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the LPIPS-off warning
        torch.manual_seed(0)
        return PyraTok.from_config(cfg)


@pytest.fixture(scope="session")
def tiny22():
    """Tiny Wan 2.2 PyraTok in eval mode; tests must not change its weights."""
    return build("wan2.2").eval()


@pytest.fixture(scope="session")
def tiny21():
    return build("wan2.1").eval()


def clip(frames: int = 5, height: int = 64, width: int = 64, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A smooth random video in [-1, 1] (structured enough for SSIM/recon to mean something)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, frames, max(1, height // 8), max(1, width // 8), generator=g)
    video = torch.nn.functional.interpolate(coarse, size=(frames, height, width), mode="trilinear", align_corners=False)
    return video * 2 - 1
