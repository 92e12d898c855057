"""LoRA on every conv of the Wan VAE encoder (and optionally decoder), through peft.

Wan's ``WanCausalConv3d`` is an ``nn.Conv3d`` whose padding is reset to 0 and
re-applied by hand in ``forward(x, cache_x)``: causal in time (all temporal
padding in front) with the previous chunk's last frames (``cache_x``) standing
in for that padding. peft's stock Conv3d LoRA calls ``lora_A(x)`` on the
unpadded input and drops ``cache_x`` — wrong shapes and a leak across the time
cache. :class:`CausalConv3dLora` is registered with peft for that type: it pads
exactly like the base layer once, then runs the base conv and ``lora_A`` on
the same padded input (``lora_B`` is 1x1x1). Merge/unmerge/delta weights are
peft's own (the kernel shapes are the standard Conv3d ones).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

ADAPTER_NAME = "pyratok"


def causal_pad(conv: nn.Module, x: torch.Tensor, cache_x: torch.Tensor | None) -> torch.Tensor:
    """Exactly ``WanCausalConv3d.forward``'s input padding (time cache included)."""
    padding = list(conv._padding)
    if cache_x is not None and conv._padding[4] > 0:
        x = torch.cat([cache_x.to(x.device), x], dim=2)
        padding[4] -= cache_x.shape[2]
    return F.pad(x, padding)


def _lora_conv3d_base():
    from peft.tuners.lora.layer import Conv3d

    return Conv3d


class CausalConv3dLora(_lora_conv3d_base()):
    """peft LoRA layer for ``WanCausalConv3d``: same causal padding and time cache as the base layer."""

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs) -> None:
        if getattr(config, "use_dora", False):
            raise ValueError("DoRA is not supported on Wan's causal Conv3d")
        # peft builds lora_A as type(base_layer)(in, r, kernel, stride, padding, bias=False); Wan's class has
        # another signature, so present the base as a plain Conv3d while peft builds (and inits) the adapter.
        base = self.get_base_layer()
        cls = base.__class__
        base.__class__ = nn.Conv3d
        try:
            super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)
        finally:
            base.__class__ = cls

    def get_delta_weight(self, adapter) -> torch.Tensor:
        # lora_B is 1x1x1, so the delta is one matmul for every kernel shape (peft's 1x1 shortcut
        # mis-squeezes 5-d 1x1x1 kernels).
        a, b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        dtype = a.dtype
        if a.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
            a, b = a.float(), b.float()
        delta = (b.flatten(1) @ a.flatten(1)).view(b.shape[0], *a.shape[1:]) * self.scaling[adapter]
        return delta.to(dtype)

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        base = self.get_base_layer()
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return base(x, cache_x)
        if self.merged:
            return base(x, cache_x)
        padded = causal_pad(base, x, cache_x)
        result = nn.Conv3d.forward(base, padded)  # the base conv itself has zero padding
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_in = self._cast_input_dtype(padded, self.lora_A[name].weight.dtype)
            delta = self.lora_B[name](self.lora_A[name](self.lora_dropout[name](lora_in)))
            result = result + (delta * self.scaling[name]).to(result.dtype)
        return result


def conv_names(module: nn.Module) -> list[str]:
    """Every Conv2d/Conv3d (incl. Wan's causal convs) inside ``module``."""
    return [name for name, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)) and name]


def add_lora(module: nn.Module, *, rank: int, alpha: float, dropout: float = 0.0, adapter_name: str = ADAPTER_NAME,
             within: tuple[str, ...] | None = None) -> list[str]:
    """Inject LoRA into every conv of ``module`` (only those under the ``within`` submodules, if given) in place;
    returns the adapted module names.

    LoRA B starts at zero, so the adapted module computes exactly what the frozen one does.
    """
    import peft
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    targets = conv_names(module)
    if within is not None:
        targets = [t for t in targets if any(t == w or t.startswith(w + ".") for w in within)]
    if not targets:
        raise ValueError(f"{type(module).__name__} has no conv layers to adapt")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, init_lora_weights=True)
    # peft's documented (experimental) hook for LoRA on custom layers; tests/model/test_lora.py pins it
    config._register_custom_module({WanCausalConv3d: CausalConv3dLora})
    peft.inject_adapter_in_model(config, module, adapter_name=adapter_name)
    return targets


def lora_layers(module: nn.Module) -> Iterator[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return (m for m in module.modules() if isinstance(m, BaseTunerLayer))


def has_lora(module: nn.Module) -> bool:
    return next(lora_layers(module), None) is not None


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if "lora_" in k}


def load_lora_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter weights; every adapter key of ``module`` must be present and nothing else."""
    expected = set(lora_state_dict(module))
    given = set(state)
    if expected != given:
        missing, extra = sorted(expected - given)[:5], sorted(given - expected)[:5]
        raise ValueError(f"LoRA state does not match the model: missing {missing}, unexpected {extra}")
    module.load_state_dict(state, strict=False)


def merge_lora(module: nn.Module) -> None:
    for layer in lora_layers(module):
        layer.merge()


def unmerge_lora(module: nn.Module) -> None:
    for layer in lora_layers(module):
        if layer.merged:
            layer.unmerge()


@contextlib.contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[None]:
    """Run ``module`` as the frozen base (e.g. the drift reference).

    peft's ``enable_adapters(False)`` would also flip ``requires_grad`` on the
    adapter weights (and turn them back on for every adapter afterwards, even
    ones a training stage froze), so only the disable flag is toggled here.
    """
    layers = list(lora_layers(module))
    saved = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, saved):
            layer._disable_adapters = flag
