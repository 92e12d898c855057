"""LoRA on Wan's causal convs: identity at init, same padding/time cache as the base, merge, save/load, frozen base."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyratok.model.backbone import build_random_vae
from pyratok.model.lora import (
    CausalConv3dLora,
    adapters_disabled,
    add_lora,
    conv_names,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    merge_lora,
    unmerge_lora,
)
from pyratok.model.presets import TINY_VAE_ARCH


def tiny_vae(kind: str = "wan2.2"):
    return build_random_vae(kind, TINY_VAE_ARCH[kind], seed=0)


def mu(vae, x):
    with torch.no_grad():
        return vae.encode(x).latent_dist.mean


def randomize_lora(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for layer in lora_layers(module):
        for b in layer.lora_B.values():
            b.weight.data = torch.randn(b.weight.shape, generator=g) * 0.05


@pytest.mark.parametrize("kind", ["wan2.2", "wan2.1"])
def test_every_encoder_conv_gets_lora_and_init_is_identity(kind):
    vae = tiny_vae(kind)
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    before = mu(vae, x)
    convs = conv_names(vae.encoder)
    adapted = add_lora(vae.encoder, rank=4, alpha=8)
    assert adapted == convs and len(list(lora_layers(vae.encoder))) == len(convs)
    causal = [m for m in lora_layers(vae.encoder) if isinstance(m, CausalConv3dLora)]
    assert causal, "Wan's causal Conv3d layers must use the custom LoRA layer"
    assert torch.equal(mu(vae, x), before)


def test_lora_uses_the_causal_padding_and_time_cache_of_the_base():
    """Merged weights run through Wan's own causal conv (padding + cache across 1,4,4 chunks); unmerged LoRA must agree."""
    vae = tiny_vae()
    add_lora(vae.encoder, rank=4, alpha=8)
    randomize_lora(vae.encoder)
    x = torch.rand(1, 3, 9, 32, 48) * 2 - 1
    unmerged = mu(vae, x)
    with adapters_disabled(vae.encoder):
        base = mu(vae, x)
    assert (unmerged - base).abs().max() > 1e-3  # the adapters do something
    merge_lora(vae.encoder)
    assert all(layer.merged for layer in lora_layers(vae.encoder))
    assert torch.allclose(mu(vae, x), unmerged, atol=1e-5)
    unmerge_lora(vae.encoder)
    assert torch.allclose(mu(vae, x), unmerged, atol=1e-5)
    with adapters_disabled(vae.encoder):
        assert torch.allclose(mu(vae, x), base, atol=1e-5)


def test_single_causal_conv_matches_explicit_computation_with_cache():
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    torch.manual_seed(0)
    holder = nn.Sequential()
    holder.add_module("conv", WanCausalConv3d(4, 6, 3, padding=1))
    add_lora(holder, rank=2, alpha=4)
    layer = holder.conv
    randomize_lora(holder, seed=1)
    x, cache = torch.randn(1, 4, 4, 5, 5), torch.randn(1, 4, 2, 5, 5)
    out = layer(x, cache)
    weight = layer.base_layer.weight + layer.get_delta_weight("pyratok")
    # causal: the 2 cached frames replace the 2 front zero-pad frames; spatial padding 1 on each side
    padded = nn.functional.pad(torch.cat([cache, x], 2), (1, 1, 1, 1, 0, 0))
    expected = nn.functional.conv3d(padded, weight, layer.base_layer.bias)
    assert torch.allclose(out, expected, atol=1e-5)


def test_only_lora_gets_gradients_and_disabling_keeps_requires_grad():
    vae = tiny_vae()
    vae.requires_grad_(False)
    add_lora(vae.encoder, rank=4, alpha=8)
    randomize_lora(vae.encoder)
    with adapters_disabled(vae.encoder):
        pass
    vae.encode(torch.rand(1, 3, 5, 32, 32)).latent_dist.mean.square().mean().backward()
    for name, p in vae.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_adapter_state_round_trip():
    a = tiny_vae()
    add_lora(a.encoder, rank=4, alpha=8)
    randomize_lora(a.encoder, seed=3)
    state = lora_state_dict(a.encoder)
    assert state and all("lora_" in k for k in state)
    b = tiny_vae()
    add_lora(b.encoder, rank=4, alpha=8)
    load_lora_state_dict(b.encoder, state)
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    assert torch.equal(mu(a, x), mu(b, x))
    with pytest.raises(ValueError, match="LoRA state does not match"):
        load_lora_state_dict(b.encoder, {k: v for k, v in list(state.items())[1:]})
