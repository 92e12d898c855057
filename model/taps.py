"""Encoder taps F^(1..4): outputs of four encoder depths, collected across Wan's causal time chunks.

Wan's encoder runs frame 0 alone, then chunks of 4 frames, each call reusing a
feature cache; calling ``vae.encoder`` once on the whole clip without that
cache gives wrong frame counts. So the taps are forward hooks on the chosen
modules while the VAE's own ``encode`` drives the chunk loop: every chunk
appends its output and the chunks are concatenated along time afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def default_tap_names(encoder: nn.Module) -> list[str]:
    """The end of each of the encoder's four resolution stages.

    Wan 2.2 (residual down blocks): ``down_blocks.0..3``. Wan 2.1 (a flat list
    of residual blocks and resamplers): each resampler, then the last block.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResample, WanResidualDownBlock

    blocks = encoder.down_blocks
    if all(isinstance(b, WanResidualDownBlock) for b in blocks):
        return [f"down_blocks.{i}" for i in range(len(blocks))]
    ends = [i for i, b in enumerate(blocks) if isinstance(b, WanResample) and b.mode != "none"]
    return [f"down_blocks.{i}" for i in (*ends, len(blocks) - 1)]


class TapCollector:
    """Forward hooks on named submodules of ``root``; ``collect()`` yields per-chunk outputs."""

    def __init__(self, root: nn.Module, names: list[str]):
        modules = dict(root.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"tap modules {missing} not found in {type(root).__name__}")
        self.root = root
        self.names = list(names)
        self._modules = [modules[n] for n in names]

    @contextlib.contextmanager
    def collect(self) -> Iterator[list[list[torch.Tensor]]]:
        store: list[list[torch.Tensor]] = [[] for _ in self._modules]
        handles = [
            module.register_forward_hook(lambda _m, _inp, out, i=i: store[i].append(out))
            for i, module in enumerate(self._modules)
        ]
        try:
            yield store
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def concat(store: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """Per tap, the chunks joined along time: (B, C, t, h, w)."""
        if any(not chunks for chunks in store):
            raise RuntimeError("a tap module never ran; is it on the encoder's path?")
        return [torch.cat(chunks, dim=2) for chunks in store]
