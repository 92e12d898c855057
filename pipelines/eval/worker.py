"""The eval actor: one model load, then batches of val clips -> per-clip metrics, histograms and features.

Rows carry arrays as bytes (float32 / int64) so Arrow moves them as plain binary columns.
"""

from __future__ import annotations

import json
import logging
import warnings
from typing import Any

import numpy as np
import torch

from pyratok.core.storage import Storage, StorageConfig
from pyratok.model.pixels import to_pixels
from pyratok.model.video_io import side_by_side_mp4
from pyratok.pipelines.eval.config import EvalConfig
from pyratok.pipelines.eval.metrics import (
    bits_per_pixel, compression_ratio, lpips_per_clip, psnr_per_clip, ssim_per_clip,
)  # fmt: skip
from pyratok.pipelines.train.buckets import Geometry
from pyratok.pipelines.train.decode import ClipDecodeError, decode_clip

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("psnr", "ssim", "lpips", "vae_psnr", "vae_ssim", "untrained_psnr", "untrained_ssim")


class EvalGeometryError(ValueError):
    """The eval geometry does not fit the model's grids."""


def check_geometry(model, cfg: EvalConfig, where: str) -> None:
    s, t = model.spatial_multiple, model.temporal_multiple
    wrong = []
    if (cfg.frames - 1) % t:
        wrong.append(f"eval.frames={cfg.frames} is not 1 + {t}k")
    for name, side in (("height", cfg.height), ("width", cfg.width)):
        if side % s:
            wrong.append(f"eval.{name}={side} is not a multiple of {s}")
    if wrong:
        raise EvalGeometryError(f"the model at {where} cannot tokenize the eval geometry: {'; '.join(wrong)}")


def pooled_semantics(model, levels: list[torch.Tensor]) -> torch.Tensor:
    """(B, text_dim): the semantic head of the mean token bits per level, averaged over levels (as in training)."""
    from pyratok.model.lfq import ids_to_bits

    bits = model.lapq.code_bits
    pooled = torch.stack([ids_to_bits(ids.long(), bits).flatten(1, -2).mean(1) for ids in levels]).mean(0)
    return model.semantic_head(pooled.to(model.device))


def histogram_bytes(ids: torch.Tensor) -> bytes:
    """One clip's ids of one level -> int64 (codes..., counts...)."""
    codes, counts = torch.unique(ids.flatten().long().cpu(), return_counts=True)
    return np.concatenate([codes.numpy(), counts.numpy()]).astype(np.int64).tobytes()


class EvalWorker:
    def __init__(self, *, model_uri: str, eval_cfg: dict, storage: dict, sample_keys: list[str],
                 baseline: dict | None = None, device: str | None = None, tracking_uri: str | None = None):  # fmt: skip
        from pyratok.model import PyraTok
        from pyratok.model.config import ModelConfig
        from pyratok.model.sources import use_tracking_server_for
        from pyratok.pipelines.eval.features import load_extractor

        use_tracking_server_for(model_uri, tracking_uri)

        self.cfg = EvalConfig.model_validate(eval_cfg)
        self.storage = Storage(StorageConfig.model_validate(storage))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = PyraTok.from_pretrained(model_uri, storage=self.storage).to(self.device).eval()
        check_geometry(self.model, self.cfg, model_uri)
        self.baseline = None
        if baseline is not None:  # the untrained model: the preset's model section, as training started from it
            torch.manual_seed(int(baseline["seed"]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the same config's warnings were given when the model loaded
                untrained = PyraTok.from_config(ModelConfig.model_validate(baseline["model"]), storage=self.storage)
            if list(untrained.lapq.grids) != list(self.model.lapq.grids):
                raise EvalGeometryError(f"eval.untrained_baseline: the config's model has token grids {untrained.lapq.grids}, "
                                        f"the model at {model_uri} {self.model.lapq.grids}; evaluate with its own preset")
            self.baseline = untrained.to(self.device).eval()
        self.extractor = None
        if self.cfg.fvd.extractor:
            self.extractor = load_extractor(self.cfg.fvd.extractor, frames=self.cfg.fvd.frames, size=self.cfg.fvd.size,
                                            storage=self.storage, device=self.device)
        self.sample_keys = set(sample_keys)
        self.geometry = Geometry(self.cfg.frames, self.cfg.height, self.cfg.width)

    # -- one batch -----------------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows: list[dict[str, Any]] = []
        good: list[tuple[dict, np.ndarray]] = []
        for i in range(len(batch["key"])):
            row = {"key": str(batch["key"][i]), "shard": str(batch["shard"][i]), "caption": str(batch["caption"][i]),
                   "error": str(batch["error"][i]), "detail": str(batch["detail"][i])}
            if not row["error"]:
                try:
                    listed = int(batch["frames"][i]) if "frames" in batch else None
                    frames = decode_clip(bytes(batch["video"][i]), self.geometry, key=row["key"], listed_frames=listed)
                    good.append((row, frames))
                    continue
                except ClipDecodeError as exc:
                    row.update(error=exc.reason, detail=str(exc))
                except Exception as exc:  # noqa: BLE001 - any undecodable clip is counted, never fatal
                    row.update(error="corrupt", detail=f"{row['key']}: {type(exc).__name__}: {exc}")
            log.warning("eval skips %s: %s (%s)", row["key"], row["error"], row["detail"])
            rows.append(row)
        if good:
            rows.extend(self._score([r for r, _ in good], np.stack([f for _, f in good])))
        return _columns(rows)

    @torch.no_grad()
    def _score(self, rows: list[dict], frames: np.ndarray) -> list[dict]:
        model, tile = self.model, self.cfg.tile
        video = to_pixels(torch.from_numpy(frames).permute(0, 4, 1, 2, 3).to(self.device), torch.float32)
        captions = [r["caption"] for r in rows]
        text = model.embed_text(captions, len(rows))  # for the tokens and for retrieval
        pyramid = model.encode(video, embedding=text, tile=tile)
        recon = model.decode(pyramid, tile=tile).clamp(-1, 1)
        scores = {"psnr": psnr_per_clip(recon, video), "ssim": ssim_per_clip(recon, video)}
        if model.lpips is not None:
            scores["lpips"] = lpips_per_clip(model.lpips, recon, video)
        if self.cfg.vae_ceiling:
            ceiling = self._vae_reconstruction(video)
            scores.update(vae_psnr=psnr_per_clip(ceiling, video), vae_ssim=ssim_per_clip(ceiling, video))
        if self.baseline is not None:
            base = self.baseline.decode(self.baseline.encode(video, captions, tile=tile), tile=tile).clamp(-1, 1)
            scores.update(untrained_psnr=psnr_per_clip(base, video), untrained_ssim=ssim_per_clip(base, video))
        semantics = pooled_semantics(model, pyramid.levels).float().cpu().numpy()
        text_pooled = text.pooled.float().cpu().numpy()
        real_feats = fake_feats = None
        if self.extractor is not None:
            real_feats, fake_feats = self.extractor(video), self.extractor(recon)
        t, h, w = video.shape[2:]
        bits = model.lapq.code_bits
        for i, row in enumerate(rows):
            tokens = int(sum(level[i].numel() for level in pyramid.levels))
            row.update({name: float(v[i]) for name, v in scores.items()})
            row.update(
                tokens=tokens, bits_per_pixel=bits_per_pixel(tokens, bits, t, h, w),
                compression=compression_ratio(tokens, bits, t, h, w),
                histograms=json.dumps([histogram_bytes(level[i]).hex() for level in pyramid.levels]),
                semantics=semantics[i].astype(np.float32).tobytes(),
                text=b"" if text_pooled is None else text_pooled[i].astype(np.float32).tobytes(),
                fvd_real=b"" if real_feats is None else real_feats[i].astype(np.float32).tobytes(),
                fvd_recon=b"" if fake_feats is None else fake_feats[i].astype(np.float32).tobytes(),
                mp4=side_by_side_mp4(video[i].cpu(), recon[i].cpu()) if row["key"] in self.sample_keys else b"",
            )  # fmt: skip
        return rows

    def _vae_reconstruction(self, video: torch.Tensor) -> torch.Tensor:
        """The backbone VAE's own continuous path: the frozen encoder's mu (adapters off), decoded."""
        from pyratok.model.lora import adapters_disabled

        backbone = self.model.backbone
        with adapters_disabled(backbone.vae.encoder):
            mu = backbone.vae.encode(video).latent_dist.mean
        return backbone.decode(mu).clamp(-1, 1)


COLUMNS = ("key", "shard", "caption", "error", "detail", *METRIC_COLUMNS, "tokens", "bits_per_pixel", "compression",
           "histograms", "semantics", "text", "fvd_real", "fvd_recon", "mp4")  # fmt: skip


def _columns(rows: list[dict]) -> dict[str, list]:
    defaults = {c: float("nan") for c in METRIC_COLUMNS} | {"tokens": 0, "bits_per_pixel": float("nan"),
                                                              "compression": float("nan"), "histograms": "[]",
                                                              "semantics": b"", "text": b"", "fvd_real": b"",
                                                              "fvd_recon": b"", "mp4": b""}  # fmt: skip
    return {c: [r.get(c, defaults.get(c, "")) for r in rows] for c in COLUMNS}
