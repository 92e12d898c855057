"""The Wan VAE backbone (diffusers ``AutoencoderKLWan``): frozen, LoRA on the encoder, taps, decoder.

Base weights come from ``from_pretrained`` on a local dir or an ``s3://``
prefix (production: the Wan 2.2 TI2V-5B VAE) or, when no path is configured,
are built from the kind's architecture (optionally shrunk by ``arch``) with a
fixed seed — the tiny presets. Either way the base is frozen; only LoRA (and
the decoder when configured) train.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pyratok.model.config import BackboneConfig
from pyratok.model.grid import Grid
from pyratok.model.lora import adapters_disabled, add_lora
from pyratok.model.sources import local_dir, resolve
from pyratok.model.taps import TapCollector, default_tap_names
from pyratok.model.vae_chunks import blocks_through

# The real architectures (diffusers configs of the released VAEs). Random-init presets override some keys.
WAN22_ARCH: dict[str, Any] = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
    scale_factor_spatial=16, scale_factor_temporal=4,
)
WAN21_ARCH: dict[str, Any] = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], is_residual=False, scale_factor_spatial=8, scale_factor_temporal=4,
)
ARCHS = {"wan2.2": WAN22_ARCH, "wan2.1": WAN21_ARCH}


def build_random_vae(kind: str, arch: dict[str, Any] | None = None, seed: int = 0):
    """An AutoencoderKLWan of ``kind``'s architecture (with ``arch`` overrides) and seeded random weights."""
    from diffusers import AutoencoderKLWan

    kwargs = {**ARCHS[kind], **(arch or {})}
    z = kwargs["z_dim"]
    kwargs.setdefault("latents_mean", [0.0] * z)
    kwargs.setdefault("latents_std", [1.0] * z)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKLWan(**kwargs)


def detect_kind(vae) -> str:
    return "wan2.2" if vae.config.is_residual else "wan2.1"


def check_video(video: torch.Tensor, *, spatial_multiple: int, temporal_multiple: int, name: str = "video",
                allow_uint8: bool = False) -> None:
    """Reject inputs the VAE would silently mangle (it drops frames beyond 1+4k).

    ``allow_uint8``: the training forward also takes the loader's uint8 frames (``model/pixels.py``).
    """
    if not torch.is_tensor(video) or video.dim() != 5:
        raise ValueError(f"{name} must be a (B, 3, T, H, W) tensor, got {getattr(video, 'shape', type(video))}")
    if not (video.is_floating_point() or (allow_uint8 and video.dtype == torch.uint8)):
        wanted = "float in [-1, 1] or uint8 in [0, 255]" if allow_uint8 else "float in [-1, 1]"
        raise ValueError(f"{name} must be {wanted}, got {video.dtype}")
    _, channels, frames, height, width = video.shape
    if channels != 3:
        raise ValueError(f"{name} must have 3 channels (RGB) in dim 1, got {channels}")
    if (frames - 1) % temporal_multiple:
        lo = 1 + temporal_multiple * ((frames - 1) // temporal_multiple)
        raise ValueError(
            f"{name} has {frames} frames; the causal VAE needs 1 + {temporal_multiple}k frames "
            f"(e.g. {lo} or {lo + temporal_multiple})"
        )
    if height % spatial_multiple or width % spatial_multiple:
        raise ValueError(
            f"{name} is {height}x{width}; height and width must be multiples of {spatial_multiple} "
            "(the coarsest token stride): crop or resize first"
        )


class WanBackbone(nn.Module):
    """Frozen Wan VAE + encoder LoRA + tap hooks; ``encode`` -> (taps, mu), ``decode`` latents -> video."""

    def __init__(self, *, vae, taps: list[str] | None, lora_rank: int, lora_alpha: float, lora_dropout: float,
                 lora_enabled: bool = True, decoder: str = "frozen"):
        super().__init__()
        self.vae = vae
        self.vae.requires_grad_(False)
        self.vae.eval()
        self.kind = detect_kind(vae)
        self.decoder_mode = decoder
        tap_names = taps or default_tap_names(vae.encoder)
        self.tap_blocks = blocks_through(vae.encoder, tap_names)
        """``down_blocks`` that run before every tap has fired (the chunked forward stops there)."""
        if lora_enabled:
            # LoRA only where it reaches a tap: the mid block and conv_out feed mu alone, which the tokenizer never uses.
            used = ("conv_in", *(f"down_blocks.{i}" for i in range(self.tap_blocks)))
            add_lora(vae.encoder, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout, within=used)
        if decoder == "lora":
            add_lora(vae.decoder, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout)
        elif decoder == "full":
            vae.decoder.requires_grad_(True)
            vae.post_quant_conv.requires_grad_(True)
        self.taps = TapCollector(vae.encoder, tap_names)
        self.latent_grid = Grid(vae.config.scale_factor_spatial, vae.config.scale_factor_temporal)
        self.tap_grids, self.tap_channels = self._probe_taps()
        strides = [g.stride for g in self.tap_grids] + [self.latent_grid.stride]
        self.spatial_multiple = math.lcm(*strides)
        self.temporal_multiple = self.latent_grid.frames_per_cell

    @classmethod
    def from_config(cls, cfg: BackboneConfig, *, storage=None, cache_dir=None, base_dir=None) -> "WanBackbone":
        """Load the VAE from ``cfg.path`` (local/S3, relative to ``base_dir``) or build it randomly from ``cfg.arch``."""
        if cfg.path is None:
            vae = build_random_vae(cfg.kind, cfg.arch, cfg.init_seed)
        else:
            from diffusers import AutoencoderKLWan

            where = local_dir(resolve(cfg.path, base_dir), storage=storage, cache_dir=cache_dir, subfolder=cfg.subfolder)
            vae = AutoencoderKLWan.from_pretrained(str(where))
        kind = detect_kind(vae)
        if kind != cfg.kind:
            raise ValueError(f"backbone.kind is {cfg.kind!r} but the VAE at {cfg.path!r} is a {kind} VAE")
        return cls(vae=vae, taps=cfg.taps, lora_rank=cfg.lora.rank, lora_alpha=cfg.lora.alpha,
                   lora_dropout=cfg.lora.dropout, lora_enabled=cfg.lora.enabled, decoder=cfg.decoder)

    @torch.no_grad()
    def _probe_taps(self) -> tuple[list[Grid], list[int]]:
        """Measure each tap's stride, temporal factor and width with one small encode."""
        s = self.latent_grid.stride * 2
        frames = 1 + 2 * self.latent_grid.frames_per_cell
        param = next(self.vae.parameters())
        x = torch.zeros(1, 3, frames, s, s, device=param.device, dtype=param.dtype)
        taps, _ = self.encode(x, with_mu=False)
        grids = []
        for name, tap in zip(self.taps.names, taps):
            t, h, w = tap.shape[2:]
            if s % h or h != w or (frames - 1) % max(t - 1, 1):
                raise ValueError(f"tap {name} has an unsupported grid {tuple(tap.shape[2:])} for input {frames}x{s}x{s}")
            grids.append(Grid(stride=s // h, frames_per_cell=(frames - 1) // (t - 1)))
        return grids, [int(t.shape[1]) for t in taps]

    def encode(self, video: torch.Tensor, *, with_mu: bool = True) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Taps F^(1..L) (B, C_l, t_l, h_l, w_l) and, if asked, the (LoRA-adapted) posterior mean mu.

        The VAE's own ``encode`` drives the causal chunk loop and its feature cache; the hooks collect the taps.
        """
        with self.taps.collect() as store:
            mu = self.vae.encode(video).latent_dist.mean
        return self.taps.concat(store), (mu if with_mu else None)

    @torch.no_grad()
    def frozen_taps(self, video: torch.Tensor) -> list[torch.Tensor]:
        """Taps of the frozen encoder (adapters off): the drift reference."""
        with adapters_disabled(self.vae.encoder):
            return self.encode(video, with_mu=False)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, z, t, h, w) -> video (B, 3, T, H, W) in [-1, 1] (diffusers' own decode loop)."""
        return self.vae.decode(latents).sample

    @property
    def z_dim(self) -> int:
        return int(self.vae.config.z_dim)
