"""The Wan VAE's pieces run one causal time chunk at a time, with the feature cache passed explicitly.

diffusers' ``AutoencoderKLWan`` drives its own chunk loop (encoder: frame 0, then 4 frames at a
time; decoder: one latent frame at a time) over one cache list that its modules mutate in place.
Here every call takes a cache and returns a new one (the input list is never touched), so

- a chunk can run under activation checkpointing: the recompute in backward sees the very cache
  the forward saw, and gradients flow into the previous chunk through the returned cache tensors;
- every spatial tile carries a cache of its own;
- the encoder can stop at the deepest tap (its mid block's attention is global over the frame and
  only feeds mu, which the tokenizer never uses), and the decoder splits into its latent-resolution
  head (``conv_in`` + mid block, global attention: run on whole frames) and its upsampling tail
  (local: run per tile).

The modules themselves are diffusers' own (with our LoRA layers inside); only the loop and the
few lines of ``WanEncoder3d.forward`` / ``WanDecoder3d.forward`` that cache ``conv_in`` and
``conv_out`` are written here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

CACHE_T = 2  # frames each causal 3x3x3 conv keeps (diffusers' CACHE_T)

Cache = list[Any]
"""One entry per causal conv: None (not run yet), a tensor, or diffusers' ``"Rep"`` marker."""


def causal_conv_count(module: nn.Module) -> int:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


def new_cache(module: nn.Module) -> Cache:
    return [None] * causal_conv_count(module)


def _cached_conv(conv: nn.Module, x: torch.Tensor, cache: Cache, idx: list[int]) -> torch.Tensor:
    """``conv_in`` / ``conv_out`` with the cache, exactly as ``WanEncoder3d.forward`` does it."""
    i = idx[0]
    cache_x = x[:, :, -CACHE_T:].clone()
    if cache_x.shape[2] < 2 and cache[i] is not None:
        cache_x = torch.cat([cache[i][:, :, -1:].to(cache_x.device), cache_x], dim=2)
    out = conv(x, cache[i])
    cache[i] = cache_x
    idx[0] += 1
    return out


def vae_chunks(frames: int, first: bool) -> list[slice]:
    """The encoder's own chunking of ``frames`` input frames: [0:1], then runs of 4 (``first``: the clip's start)."""
    if first:
        return [slice(0, 1)] + [slice(s, s + 4) for s in range(1, frames, 4)]
    return [slice(s, s + 4) for s in range(0, frames, 4)]


def encoder_chunk(encoder: nn.Module, x: torch.Tensor, cache: Cache, *, blocks: int) -> tuple[torch.Tensor, Cache]:
    """``conv_in`` + ``down_blocks[:blocks]`` on one VAE chunk (1 or 4 patchified frames) -> (features, new cache)."""
    cache, idx = list(cache), [0]
    x = _cached_conv(encoder.conv_in, x, cache, idx)
    for layer in encoder.down_blocks[:blocks]:
        x = layer(x, feat_cache=cache, feat_idx=idx)
    return x, cache


def decoder_head_chunk(decoder: nn.Module, z: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, Cache]:
    """``conv_in`` + mid block on one latent frame (after ``post_quant_conv``): whole frames only (global attention)."""
    cache, idx = list(cache), [0]
    x = _cached_conv(decoder.conv_in, z, cache, idx)
    return decoder.mid_block(x, feat_cache=cache, feat_idx=idx), cache


def decoder_tail_chunk(decoder: nn.Module, x: torch.Tensor, cache: Cache, *, first_chunk: bool) -> tuple[torch.Tensor, Cache]:
    """Up blocks + output head on one latent frame of mid-block features -> (patchified pixels, new cache)."""
    cache, idx = list(cache), [0]
    for block in decoder.up_blocks:
        x = block(x, feat_cache=cache, feat_idx=idx, first_chunk=first_chunk)
    x = decoder.nonlinearity(decoder.norm_out(x))
    return _cached_conv(decoder.conv_out, x, cache, idx), cache


def blocks_through(encoder: nn.Module, tap_names: list[str]) -> int:
    """How many ``down_blocks`` the encoder must run so that every tap has fired."""
    deepest = 0
    for name in tap_names:
        parts = name.split(".")
        if parts[0] != "down_blocks" or len(parts) < 2 or not parts[1].isdigit():
            raise ValueError(
                f"tap {name!r} is outside the encoder's down blocks; the chunked forward runs only "
                "conv_in + down_blocks (the mid block's attention spans the whole frame)"
            )
        deepest = max(deepest, int(parts[1]) + 1)
    return deepest


def in_encoder_taps(name: str, blocks: int) -> bool:
    """Whether an encoder module is on the chunked encoder's path (``conv_in`` + ``down_blocks[:blocks]``)."""
    return name == "conv_in" or name.startswith("conv_in.") or any(
        name == f"down_blocks.{i}" or name.startswith(f"down_blocks.{i}.") for i in range(blocks))


def in_decoder_tail(name: str) -> bool:
    """Whether a decoder module is in its upsampling tail (up blocks + output conv)."""
    return name.startswith("up_blocks.") or name == "conv_out" or name.startswith("conv_out.")


def _is_lora_part(name: str) -> bool:
    return ".lora_A." in f".{name}." or ".lora_B." in f".{name}."


def _conv_span(module: nn.Module) -> int:
    """Kernel extent minus one along width (spatial reach of one conv)."""
    return module.kernel_size[-1] - 1


def encoder_receptive_field(encoder: nn.Module, tap_names: list[str], patch: int = 1) -> int:
    """Receptive field (pixels) of the deepest tap along its longest conv path, in forward order.

    Every conv up to and including the last tap's own convs counts (a module's children come after
    it in ``named_modules``, so the walk stops only when it leaves the last tap's subtree).
    Parallel 1x1 shortcuts add nothing; asymmetric down-sampling pads are covered by counting
    each kernel's full extent.
    """
    last = tap_names[-1]
    field, stride = patch, patch
    inside = False
    for name, module in encoder.named_modules():
        if name == last or name.startswith(last + "."):
            inside = True
        elif inside:
            break
        if isinstance(module, (nn.Conv2d, nn.Conv3d)) and not _is_lora_part(name):
            field += _conv_span(module) * stride
            stride *= module.stride[-1]
    return field


def decoder_tail_reach(decoder: nn.Module) -> float:
    """How far (in latent cells) an output pixel of the decoder's tail looks back into its mid-block input."""
    reach, scale = 0.0, 1.0  # scale: feature pixels per latent cell at the current depth
    for name, module in decoder.named_modules():
        if not in_decoder_tail(name):
            continue
        if isinstance(module, nn.Upsample):
            factor = module.scale_factor
            scale *= float(factor[-1] if isinstance(factor, (tuple, list)) else factor)
            reach += 1.0 / scale  # nearest-neighbour rounding: half a source pixel either way, counted whole
        elif isinstance(module, (nn.Conv2d, nn.Conv3d)) and not _is_lora_part(name):
            reach += _conv_span(module) / 2 / scale
    return reach


def encoder_halo(encoder: nn.Module, tap_names: list[str], *, patch: int, cell: int) -> int:
    """Context pixels around an encoder tile so its interior taps equal the untiled encoder's.

    Half the receptive field (its reach on either side) plus one coarse cell, rounded up to the
    coarsest stride so crops stay aligned to every grid.
    """
    field = encoder_receptive_field(encoder, tap_names, patch)
    return cell * math.ceil((field / 2 + cell) / cell)


def decoder_halo_cells(decoder: nn.Module) -> int:
    """Latent cells of context around a decoder tile so its interior pixels equal an untiled decode's."""
    return math.ceil(decoder_tail_reach(decoder)) + 1
