"""LPIPS (VGG16) in plain torch — no torchvision, no ``lpips`` package (both would pull torchvision).

The VGG16 feature stack mirrors torchvision's ``vgg16().features`` layer for
layer, so a torchvision-format state dict (``vgg16-397923af.pth`` or a
safetensors export of it) loads by key. The LPIPS calibration (the lpips
project's ``weights/v0.1/vgg.pth``: ``lin{k}.model.1.weight``) is optional;
without it every channel weighs the same. Frozen; gradients flow to the input.
"""

from __future__ import annotations

import os

import torch
from torch import nn

# torchvision's VGG16 "D" config; "M" = max pool.
VGG16_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# Indices in ``features`` after which LPIPS taps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
LPIPS_TAPS = (3, 8, 15, 22, 29)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch pickle (weights only: no code runs on load)."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYERS:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers[: LPIPS_TAPS[-1] + 1])  # nothing after relu5_3 is needed


class Lpips(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_CHANNELS)
        for lin, c in zip(self.lins, LPIPS_CHANNELS):
            nn.init.constant_(lin.weight, 1.0 / c)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg_weights: str | os.PathLike, lin_weights: str | os.PathLike | None = None) -> "Lpips":
        model = cls()
        state = {k[len("features."):]: v for k, v in load_state_dict_file(vgg_weights).items() if k.startswith("features.")}
        wanted = set(model.features.state_dict())
        missing = wanted - set(state)
        if missing:
            raise ValueError(f"{vgg_weights}: not a torchvision VGG16 state dict (missing features.{sorted(missing)[0]})")
        model.features.load_state_dict({k: state[k] for k in wanted})
        if lin_weights is not None:
            lin = load_state_dict_file(lin_weights)
            for k, layer in enumerate(model.lins):
                key = f"lin{k}.model.1.weight"
                if key not in lin:
                    raise ValueError(f"{lin_weights}: not LPIPS linear weights (missing {key})")
                layer.weight.data.copy_(lin[key])
        return model

    def train(self, mode: bool = True) -> "Lpips":
        return super().train(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in LPIPS_TAPS:
                out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS distance of (N, 3, H, W) images in [-1, 1]."""
        fa = self._taps((a.float() - self.shift) / self.scale)
        fb = self._taps((b.float() - self.shift) / self.scale)
        total = a.new_zeros(a.shape[0], dtype=torch.float32)
        for lin, xa, xb in zip(self.lins, fa, fb):
            xa = xa / (xa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            xb = xb / (xb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((xa - xb).pow(2)).mean(dim=(1, 2, 3))
        return total
