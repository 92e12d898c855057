"""Keeping the adapted tokenizer close to its pretrained anchors.

- drift: ||mu_LoRA(X) - sg(mu_frozen(X))||^2, the encoder's latent mean with and without adapters;
- DINO retention: 1 - cos(DINO(frames_hat), DINO(frames)) with a frozen DINO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def drift(mu_adapted: torch.Tensor, mu_frozen: torch.Tensor) -> torch.Tensor:
    return (mu_adapted.float() - mu_frozen.detach().float()).pow(2).mean()


def dino_retention(features_recon: torch.Tensor, features_target: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cosine over frames (and patches when given (N, P, D))."""
    return (1 - F.cosine_similarity(features_recon.float(), features_target.detach().float(), dim=-1)).mean()
