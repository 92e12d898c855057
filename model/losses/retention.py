"""Keeping the adapted tokenizer close to its pretrained anchors.

- drift: ||F_LoRA(X) - sg(F_frozen(X))||^2 on the tapped features the tokenizer quantizes (mean per tap,
  averaged over taps), with and without adapters. Not on mu: the tokenizer never uses mu, and the adapters
  past the last tap would then get gradient from drift alone and could cancel it while the taps move freely;
  so there are no adapters past the last tap either. This is ``losses.drift.anchor: vae``; ``dino`` holds
  the same taps to the frozen DINOv3's patch tokens instead (Appendix B's En, ``model/anchor.py``, the
  paper preset's), ``both`` adds the two;
- DINO retention: 1 - cos(DINO(frames_hat), DINO(frames)) with a frozen DINO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def drift(adapted: list[torch.Tensor], frozen: list[torch.Tensor]) -> torch.Tensor:
    """Mean over taps of the mean squared difference between the adapted and the frozen encoder's features."""
    return torch.stack([(a.float() - f.detach().float()).pow(2).mean() for a, f in zip(adapted, frozen)]).mean()


def dino_retention(features_recon: torch.Tensor, features_target: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cosine over frames (and patches when given (N, P, D))."""
    return (1 - F.cosine_similarity(features_recon.float(), features_target.detach().float(), dim=-1)).mean()
