"""PyraTok: the language-aligned pyramidal video tokenizer (design section 4).

    model = PyraTok.from_config(cfg)                      # bases from cfg's paths (or random tiny bases)
    model = PyraTok.from_pretrained("s3://b/ckpt", losses={"ar": {"enabled": True}})
    out = model(video, texts, progress=0.3)               # training: loss, named terms, recon, tokens, metrics
    pyramid = model.encode(video, texts); video_hat = model.decode(pyramid)
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pyratok.core.config import deep_merge
from pyratok.core.storage import Storage
from pyratok.model import checkpoint
from pyratok.model.anchor import AnchorPlan, DinoAnchor, anchor_plan
from pyratok.model.ar_head import ArHead
from pyratok.model.backbone import WanBackbone, check_video
from pyratok.model.config import ModelConfig
from pyratok.model.dino import DinoEncoder
from pyratok.model.fusion import DecoderFusion
from pyratok.model.lapq import LevelOutput, Lapq
from pyratok.model.losses import codebook as codebook_losses
from pyratok.model.losses.lpips import Lpips
from pyratok.model.losses.recon import frames_of, l1, psnr, ssim_loss
from pyratok.model.losses.retention import dino_retention, drift
from pyratok.model.masking import draw_mask
from pyratok.model.metrics import codebook_usage, perplexity
from pyratok.model.pixels import RECON_KEEPS, kept_recon, to_pixels
from pyratok.model.pyramid import TokenPyramid
from pyratok.model.semantic_head import SemanticHead
from pyratok.model.sources import local_file, resolve
from pyratok.model.text_encoder import TextEmbedding, TextEncoder

log = logging.getLogger(__name__)


@dataclass
class PyraTokOutput:
    loss: torch.Tensor
    """Scalar: sum of the weighted terms."""
    losses: dict[str, torch.Tensor]
    """Each active term, unweighted (names = the keys of ``ModelConfig.losses``)."""
    weighted: dict[str, torch.Tensor]
    recon: torch.Tensor | None
    """The detached reconstruction, as ``keep_recon`` asked (None with ``none``)."""
    pyramid: TokenPyramid
    metrics: dict[str, float] = field(default_factory=dict)


def build_lpips(cfg, *, storage, cache_dir, base_dir) -> Lpips | None:
    if not cfg.enabled:
        return None
    if cfg.vgg_weights is None:
        message = ("LPIPS is OFF: model.losses.lpips.enabled is true but model.losses.lpips.vgg_weights is not set "
                   "(a torchvision-format VGG16 state dict); the reconstruction loss is L1 + (1 - SSIM) only")
        warnings.warn(message, stacklevel=3)
        log.warning(message)
        return None
    vgg = local_file(resolve(cfg.vgg_weights, base_dir), storage=storage, cache_dir=cache_dir)
    lin = local_file(resolve(cfg.lin_weights, base_dir), storage=storage, cache_dir=cache_dir) if cfg.lin_weights else None
    return Lpips.from_files(vgg, lin)


class PyraTok(nn.Module):
    def __init__(self, *, config: ModelConfig, backbone: WanBackbone, text_encoder: TextEncoder, ar_head: ArHead,
                 dino: DinoEncoder | None = None, lpips: Lpips | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.lapq = Lapq(cfg=config.lapq, tap_channels=backbone.tap_channels, tap_grids=backbone.tap_grids,
                         text_dim=text_encoder.dim)
        self.semantic_head = SemanticHead(code_bits=config.lapq.code_bits, text_dim=text_encoder.dim)
        self.fusion = DecoderFusion(cfg=config.fusion, level_dim=config.lapq.dim, level_grids=backbone.tap_grids,
                                    latent_grid=backbone.latent_grid, z_dim=backbone.z_dim)
        self.ar_head = ar_head
        self.dino = dino
        self.lpips = lpips
        self.anchor = None
        if config.losses.drift.enabled and config.losses.drift.anchor != "vae":
            if dino is None:
                raise ValueError(f"losses.drift.anchor={config.losses.drift.anchor} needs model.dino (the frozen DINOv3)")
            self.anchor = DinoAnchor(backbone.tap_channels, int(dino.model.config.hidden_size))
        self.source_dir: str | None = None
        """Where this model was loaded from (relative base paths in its config resolve against it)."""

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: ModelConfig, *, storage: Storage | None = None, base_dir: str | None = None) -> "PyraTok":
        """Build from ``cfg``: base models from their paths (local, s3://, pkg:) or random from ``arch``."""
        storage = storage or Storage()
        where = dict(storage=storage, cache_dir=cfg.cache_dir, base_dir=base_dir)
        backbone = WanBackbone.from_config(cfg.backbone, **where)
        text_encoder = TextEncoder.from_config(cfg.text_encoder, **where)
        ar_head = ArHead.from_config(cfg.ar, code_bits=cfg.lapq.code_bits, text_dim=text_encoder.dim,
                                     num_levels=len(backbone.tap_grids), text_model=text_encoder.model, **where)
        needs_dino = cfg.losses.dino.enabled or (cfg.losses.drift.enabled and cfg.losses.drift.anchor != "vae")
        dino = DinoEncoder.from_config(cfg.dino, **where) if needs_dino else None
        lpips = build_lpips(cfg.losses.lpips, **where)
        model = cls(config=cfg, backbone=backbone, text_encoder=text_encoder, ar_head=ar_head, dino=dino, lpips=lpips)
        model.source_dir = base_dir
        return model

    @classmethod
    def from_pretrained(cls, path: str, *, storage: Storage | None = None, config: ModelConfig | None = None,
                        **config_overrides: Any) -> "PyraTok":
        """Load a ``save_pretrained`` folder (local or s3://).

        ``config_overrides`` deep-merge into the saved config (e.g. ``losses={"ar": {"enabled": True}}``);
        ``config`` replaces it wholesale (architecture must match the weights).
        """
        storage = storage or Storage()
        where, saved, tensors = checkpoint.read_checkpoint(str(path), storage=storage)
        data = config.model_dump(mode="json") if config is not None else saved
        data = deep_merge(data, config_overrides)
        cfg = ModelConfig.model_validate(data)
        model = cls.from_config(cfg, storage=storage, base_dir=str(where))
        checkpoint.load_weights(model, tensors, source=str(path))
        model.source_dir = str(where)
        return model

    def save_pretrained(self, path: str, *, storage: Storage | None = None) -> None:
        """Write config + learned weights (safetensors) to a folder (local or s3://); bases referenced by path."""
        checkpoint.write_checkpoint(self, str(path), storage=storage)

    # -- properties -------------------------------------------------------------
    @property
    def spatial_multiple(self) -> int:
        return self.backbone.spatial_multiple

    @property
    def temporal_multiple(self) -> int:
        return self.backbone.temporal_multiple

    @property
    def device(self) -> torch.device:
        return next(self.lapq.parameters()).device

    @property
    def pixel_dtype(self) -> torch.dtype:
        """What uint8 frames become: the trainable weights' dtype (bf16 under a bf16 engine, else fp32 + autocast)."""
        return next(self.lapq.parameters()).dtype

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA + LaPQ + heads + fusion (+ decoder when configured); never the frozen bases."""
        return [p for p in self.parameters() if p.requires_grad]

    def check_video(self, video: torch.Tensor, *, allow_uint8: bool = False) -> None:
        check_video(video, spatial_multiple=self.spatial_multiple, temporal_multiple=self.temporal_multiple,
                    allow_uint8=allow_uint8)

    # -- building blocks ----------------------------------------------------------
    def embed_text(self, text: list[str] | None, batch: int) -> TextEmbedding:
        if text is None:
            text = [""] * batch
        if isinstance(text, str) or len(text) != batch:
            raise ValueError(f"text must be a list of {batch} strings (one per video), got {text!r:.80}")
        return self.text_encoder(list(text)).to(self.device)

    def _levels(self, video: torch.Tensor, text: TextEmbedding | None) -> tuple[list[LevelOutput], list[torch.Tensor]]:
        taps, _ = self.backbone.encode(video, with_mu=False)
        return self.lapq(taps, text), taps

    @torch.no_grad()
    def quantize(self, video: torch.Tensor, text: TextEmbedding | None) -> list[torch.Tensor]:
        """Token ids per level for an already checked video (used by tiling)."""
        levels, _ = self._levels(video, text)
        return [lv.ids for lv in levels]

    def fuse(self, level_ids: list[torch.Tensor]) -> torch.Tensor:
        """Decoder latents from token ids."""
        return self.fusion([level.embed_ids(ids) for level, ids in zip(self.lapq.levels, level_ids)])

    # -- inference API ------------------------------------------------------------
    @torch.no_grad()
    def encode(self, video: torch.Tensor, text: list[str] | None = None, *, tile: int | None = None,
               progress: bool = False, embedding: TextEmbedding | None = None) -> TokenPyramid:
        """Video (B, 3, T, H, W) in [-1, 1] -> TokenPyramid. ``tile`` (pixels): tiled and time-chunked, same tokens.

        ``embedding``: ``text`` already embedded (``embed_text``), for a caller that needs it too.
        """
        self.check_video(video)
        temb = embedding if embedding is not None else self.embed_text(text, video.shape[0])
        frames, height, width = video.shape[2:]
        if tile is None:
            ids = self.quantize(video, temb)
        else:
            from pyratok.model.streaming import encode_tiles, tensor_source
            from pyratok.model.tile_plan import plan_for

            ids, _ = encode_tiles(self, tensor_source(video), (video.shape[0], frames, height, width), temb,
                                  plan=plan_for(self, tile=tile, clip=(height, width)), progress=progress)
            ids = [level.long().to(video.device) for level in ids]
        return TokenPyramid(ids, list(self.lapq.grids), (frames, height, width), self.lapq.code_bits)

    @torch.no_grad()
    def decode(self, pyramid: TokenPyramid, *, tile: int | None = None, progress: bool = False) -> torch.Tensor:
        """TokenPyramid -> video (B, 3, T, H, W) in [-1, 1]. ``tile``: decoded tile by tile, same pixels."""
        pyramid = pyramid.to(self.device)
        if [g for g in pyramid.grids] != list(self.lapq.grids):
            raise ValueError(f"tokens were made on grids {pyramid.grids}, this model uses {self.lapq.grids}")
        if tile is None:
            return self.backbone.decode(self.fuse(pyramid.levels))
        from pyratok.model.streaming import decode_tiles, latents_from_ids
        from pyratok.model.tile_plan import plan_for

        frames, height, width = pyramid.video_shape
        plan = plan_for(self, tile=tile, clip=(height, width))
        out = torch.empty(pyramid.levels[0].shape[0], 3, frames, height, width, device=self.device)

        def sink(pixels: torch.Tensor, t0: int, y0: int, x0: int) -> None:
            t, h, w = pixels.shape[2:]
            out[:, :, t0 : t0 + t, y0 : y0 + h, x0 : x0 + w] = pixels

        decode_tiles(self, latents_from_ids(self, pyramid.levels, plan), sink, plan=plan, progress=progress)
        return out

    # -- training forward ---------------------------------------------------------
    def _needs_text(self) -> bool:
        lc = self.config.losses
        return (self.config.lapq.text_cross_attention or lc.text_kl.enabled or lc.text_align.enabled
                or (lc.ar.enabled and self.config.ar.max_text_tokens > 0))

    def forward(self, video: torch.Tensor, text: list[str] | None = None, *, progress: float = 0.0,
                keep_recon: str = "all") -> PyraTokOutput:
        """Training forward: the loss (weighted sum of the named terms), each term, stats, tokens, reconstruction.

        ``video``: (B, 3, T, H, W) float in [-1, 1], or the loader's uint8, which the tiled forward converts
        one region at a time (``model/pixels.py``). With ``tiling.train`` (default) the VAE runs in spatial
        tiles x causal time chunks under activation checkpointing (``model/bounded.py``): memory bounded by
        one tile-chunk, same loss and gradients. ``keep_recon``: what ``recon`` holds: ``all`` (the batch's
        reconstruction), ``first`` (the first clip's, on the CPU: a sample image's worth) or ``none`` (the
        tiled forward then never builds it). ``progress`` (0..1 through the stage) is the training loop's clock
        for schedules; masking no longer reads it (it draws its ratio per sample, as MaskGIT does).
        """
        self.check_video(video, allow_uint8=True)
        if keep_recon not in RECON_KEEPS:
            raise ValueError(f"keep_recon must be one of {RECON_KEEPS}, got {keep_recon!r}")
        cfg, lc = self.config, self.config.losses
        if not cfg.tiling.train:
            video = to_pixels(video, self.pixel_dtype)
        stats: dict[str, torch.Tensor] = {}
        temb = self.embed_text(text, video.shape[0]) if self._needs_text() else None

        mask = None
        if self.training and cfg.masking.enabled:
            mask = draw_mask(tuple(video.shape), cfg.masking, patch=cfg.masking.patch_size or self.spatial_multiple)
            stats["mask/frame_ratio"] = mask.frames.float().mean()
            stats["mask/spatial_ratio"] = mask.spatial_ratio.mean()
        if cfg.tiling.train:
            terms, recon, ids = self._bounded_terms(video, temb, mask, stats, keep_recon)
        else:
            terms, recon, ids = self._untiled_terms(video, temb, mask, stats)
            recon = kept_recon(recon, keep_recon)

        weighted = {name: value * lc.effective_weight(name) for name, value in terms.items()}
        loss = torch.stack(list(weighted.values())).sum() if weighted else sum(p.sum() * 0 for p in self.lapq.parameters())
        pyramid = TokenPyramid(ids, list(self.lapq.grids), tuple(video.shape[2:]), self.lapq.code_bits)
        for i, level_ids in enumerate(ids, start=1):
            stats[f"codebook_usage/level{i}"] = codebook_usage(level_ids, self.lapq.code_bits)
            stats[f"perplexity/level{i}"] = perplexity(level_ids)
        return PyraTokOutput(loss=loss, losses=terms, weighted=weighted, recon=recon, pyramid=pyramid,
                             metrics=_to_floats(stats))

    def _sample_indices(self, frames: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Frames scored by LPIPS and by DINO (None: that term is off)."""
        from pyratok.model.dino import sample_frames

        lc = self.config.losses
        lpips = sample_frames(frames, lc.lpips.max_frames) if lc.lpips.enabled and self.lpips is not None else None
        if lc.dino.enabled and self.dino is None:
            raise ValueError("losses.dino is enabled but the model was built without DINO; rebuild or reload it")
        dino = sample_frames(frames, self.dino.max_frames) if lc.dino.enabled else None
        return lpips, dino

    def _frame_terms(self, recon_frames, video: torch.Tensor, lpips_idx, dino_idx) -> dict[str, torch.Tensor]:
        """LPIPS and DINO retention on sampled frames; ``recon_frames(idx)`` gives (B, 3, n, H, W) of the reconstruction."""
        terms = {}
        if lpips_idx is not None:
            target = to_pixels(video.index_select(2, lpips_idx.to(video.device)), self.pixel_dtype)
            rec, tgt = frames_of(recon_frames(lpips_idx)), frames_of(target)
            if self.config.tiling.train and self.config.tiling.checkpoint and torch.is_grad_enabled():
                # one full-resolution frame's VGG activations alive at a time (recomputed in backward)
                from torch.utils.checkpoint import checkpoint

                per_frame = [checkpoint(self.lpips, rec[i : i + 1], tgt[i : i + 1], use_reentrant=False)
                             for i in range(rec.shape[0])]
                terms["lpips"] = torch.cat(per_frame).mean()
            else:
                terms["lpips"] = self.lpips(rec, tgt).mean()
        if dino_idx is not None:
            with torch.no_grad():
                target = self.dino(frames_of(to_pixels(video.index_select(2, dino_idx.to(video.device)), self.pixel_dtype)))
            terms["dino"] = dino_retention(self.dino(frames_of(recon_frames(dino_idx))), target)
        return terms

    def _bounded_terms(self, video, temb, mask, stats, keep_recon):
        from pyratok.model.bounded import bounded_forward

        lc = self.config.losses
        lpips_idx, dino_idx = self._sample_indices(video.shape[2])
        wanted = sorted({int(k) for idx in (lpips_idx, dino_idx) if idx is not None for k in idx})
        anchor = self.anchor_plan(video.shape)
        out = bounded_forward(self, video, temb, mask=mask, want_ar=lc.ar.enabled, sample_frames=tuple(wanted),
                              keep_recon=keep_recon, anchor=anchor)
        terms = dict(out.terms)
        stats.update(out.stats)
        if lc.text_align.enabled:
            semantics = self.semantic_head(out.pooled_bits)
            terms["text_align"] = codebook_losses.text_alignment(semantics, temb.pooled, lc.text_align.temperature)
        if lc.ar.enabled:
            ar = self.ar_head.forward_window(out.window_bits, temb, out.window)
            self._ar_stats(ar, terms, stats)
        terms.update(self._frame_terms(lambda idx: torch.stack([out.sampled[int(k)] for k in idx], dim=2), video,
                                       lpips_idx, dino_idx))
        if self.anchor is not None:
            self._add_drift(terms, self._anchor_loss(out.anchor_sums, video, anchor))
        return _ordered(terms), out.recon, out.ids

    def _untiled_terms(self, video, temb, mask, stats):
        """The plain forward through diffusers' own encode/decode loops (the reference the tiled one equals)."""
        cfg, lc = self.config, self.config.losses
        inputs = video if mask is None else mask.apply(video)
        levels, taps = self._levels(inputs, temb)
        recon = self.backbone.decode(self.fusion([lv.out for lv in levels]))

        terms: dict[str, torch.Tensor] = {}
        if lc.l1.enabled:
            terms["l1"] = l1(recon, video)
        if lc.ssim.enabled:
            terms["ssim"] = ssim_loss(recon, video)
        if lc.commitment.enabled:
            terms["commitment"] = codebook_losses.commitment(levels)
        if lc.entropy.enabled:
            terms["entropy"], entropy_stats = codebook_losses.entropy(
                levels, gamma=lc.entropy.gamma, exact=cfg.lapq.exact_codebook_entropy,
                group_bits=cfg.lapq.entropy_group_bits)
            stats.update(entropy_stats)
        if lc.hier_kl.enabled and len(levels) > 1:
            terms["hier_kl"] = codebook_losses.hierarchical_kl(levels)
        if lc.text_kl.enabled:
            text_logits = self.semantic_head.text_code_logits(temb.pooled, lc.text_kl.temperature)
            terms["text_kl"] = codebook_losses.text_kl(levels, text_logits)
        if lc.text_align.enabled:
            semantics = self.semantic_head(codebook_losses.pooled_bits(levels))
            terms["text_align"] = codebook_losses.text_alignment(semantics, temb.pooled, lc.text_align.temperature)
        if lc.ar.enabled:
            ar = self.ar_head([lv.quantized.bits for lv in levels], list(self.lapq.grids), temb)
            self._ar_stats(ar, terms, stats)
        if lc.drift.enabled and lc.drift.anchor != "dino":
            terms["drift"] = drift(taps, self.backbone.frozen_taps(inputs))
        if self.anchor is not None:
            plan = self.anchor_plan(video.shape)
            sums = [DinoAnchor.patch_sums(tap, plan.frames, grid, 0, rows, cols, 0, 0)
                    for tap, grid, (rows, cols) in zip(taps, self.lapq.grids, plan.memberships)]
            self._add_drift(terms, self._anchor_loss(sums, video, plan))
        lpips_idx, dino_idx = self._sample_indices(video.shape[2])
        terms.update(self._frame_terms(lambda idx: recon.index_select(2, idx.to(recon.device)), video, lpips_idx, dino_idx))
        stats["psnr"] = psnr(recon.detach(), video)
        return _ordered(terms), recon, [lv.ids for lv in levels]

    def anchor_plan(self, shape) -> AnchorPlan | None:
        """The DINO anchor's frames and tap-cell-to-patch memberships for a (B, 3, T, H, W) clip (None: no anchor)."""
        return None if self.anchor is None else anchor_plan(self.dino, list(self.lapq.grids), shape)

    def _anchor_loss(self, sums: list[torch.Tensor], video: torch.Tensor, plan: AnchorPlan) -> torch.Tensor:
        idx = torch.tensor(plan.frames, device=video.device)
        with torch.no_grad():
            target = self.dino.patch_tokens(frames_of(to_pixels(video.index_select(2, idx), self.pixel_dtype)))
        return self.anchor.loss(sums, plan.memberships, target)

    @staticmethod
    def _add_drift(terms: dict[str, torch.Tensor], value: torch.Tensor) -> None:
        """``both`` anchors: the drift term is the sum of the two."""
        terms["drift"] = terms["drift"] + value if "drift" in terms else value

    @staticmethod
    def _ar_stats(ar, terms, stats) -> None:
        terms["ar"] = ar.loss
        stats["ar/bit_accuracy"] = ar.bit_accuracy
        stats["ar/tokens"] = torch.tensor(float(ar.tokens))


def _ordered(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Terms in the config's order, so both forwards sum them in the same order."""
    from pyratok.model.config import LOSS_TERMS

    return {name: terms[name] for name in LOSS_TERMS if name in terms}


def _to_floats(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    if not stats:
        return {}
    values = torch.stack([v.detach().float().reshape(()).cpu() for v in stats.values()]).tolist()
    return dict(zip(stats.keys(), values))
