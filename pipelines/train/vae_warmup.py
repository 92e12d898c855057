"""The ``vae-warmup`` stage: train a random backbone VAE as a plain autoencoder, then freeze it for PyraTok.

The embedded default has no Wan VAE weights offline, and PyraTok trains on a frozen VAE (LoRA on
its encoder). A frozen *random* encoder passes too little of a clip for LaPQ and the decoder to
learn from, so the tiny preset first gets what the real preset downloads: a VAE that
reconstructs. Encoder and decoder train together on the train split's clips (L1, AdamW), and the
result is written as a diffusers ``AutoencoderKLWan`` folder that ``model.backbone.path`` then names.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pyratok.core.dataset import list_shards
from pyratok.core.storage import Storage
from pyratok.model.pixels import to_pixels

log = logging.getLogger(__name__)


@dataclass
class WarmupResult:
    vae_uri: str
    steps: int
    clips: int
    final_l1: float
    train_psnr: float
    wall_s: float


def train_clips(storage: Storage, root: str, *, frames: int, sides: list[int], max_clips: int,
                windows: int) -> dict:
    """(height, width) -> up to ``max_clips`` train-split clips, ``windows`` consecutive windows each,
    (N, 3, frames, H, W) in [-1, 1]. The training reader draws any start in a clip: one or two windows
    per clip leave a VAE that reconstructs those and little else."""
    videos = _train_videos(storage, root, max_clips)
    return {(h, w): _decoded(videos, frames, h, w, windows) for h in sides for w in sides}


def _decoded(videos: list[tuple[str, bytes]], frames: int, height: int, width: int, windows: int) -> torch.Tensor:
    from pyratok.pipelines.train.buckets import Geometry
    from pyratok.pipelines.train.decode import ClipDecodeError, decode_clip

    geometry, out = Geometry(frames, height, width), []
    for key, data in videos:
        for start in range(0, windows * frames, frames):
            try:
                out.append(decode_clip(data, geometry, start=start, key=key))
            except ClipDecodeError as exc:
                if start == 0:  # later windows: the clip is just shorter than that
                    log.warning("vae warm-up skips %s at %dx%dx%d: %s", key, frames, height, width, exc)
                break
    if not out:
        raise ValueError(f"no train clip decodes at {frames}x{height}x{width} for the VAE warm-up")
    return to_pixels(torch.from_numpy(np.stack(out)).permute(0, 4, 1, 2, 3), torch.float32)


def _train_videos(storage: Storage, root: str, max_clips: int) -> list[tuple[str, bytes]]:
    from pyratok.core.dataset import shard_name
    from pyratok.pipelines.caption.reader import shard_samples

    out = []
    for uri in list_shards(storage, root):
        for row in shard_samples({"shard": shard_name(uri), "uri": uri, "keys": []}, storage=storage):
            if len(out) >= max_clips:
                return out
            if not row["error"] and json.loads(row["meta"] or "{}").get("split") != "val":
                out.append((row["key"], row["video"]))
    if not out:
        raise ValueError(f"{root}: no train clips to warm the VAE up on")
    return out


def warm_up_vae(cfg, *, data: str, out: str) -> WarmupResult:
    """Train ``cfg.model.backbone``'s random VAE on ``data``'s train clips; write it to ``out``."""
    from pyratok.core.logging import setup_logging
    from pyratok.model.backbone import build_random_vae

    setup_logging()  # a Ray task's process has no handler: its progress lines would vanish
    backbone, wcfg = cfg.model.backbone, cfg.train.vae_warmup
    if backbone.path:
        raise ValueError(f"train.vae_warmup is for a random backbone VAE, but model.backbone.path={backbone.path!r} "
                         "is set: a pretrained VAE needs no warm-up (set train.vae_warmup.steps=0)")
    storage = Storage(cfg.storage)
    torch.set_num_threads(max(1, int(wcfg.num_cpus)))
    clips = train_clips(storage, data, frames=max(wcfg.frames), sides=wcfg.sides, max_clips=wcfg.max_clips,
                        windows=wcfg.windows)
    sizes = sorted(clips)
    vae = build_random_vae(backbone.kind, backbone.arch, backbone.init_seed).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=wcfg.lr)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    started = last = time.perf_counter()
    loss = torch.zeros(())
    for step in range(1, wcfg.steps + 1):
        pool = clips[sizes[int(torch.randint(0, len(sizes), (1,), generator=generator))]]
        frames = wcfg.frames[int(torch.randint(0, len(wcfg.frames), (1,), generator=generator))]
        batch = pool[torch.randint(0, len(pool), (wcfg.batch_size,), generator=generator), :, :frames]
        recon = vae.decode(vae.encode(batch).latent_dist.mean).sample
        loss = (recon - batch).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if time.perf_counter() - last > 10 or step == wcfg.steps:
            log.info("vae warm-up step %d/%d: L1 %.4f (%.0fs)", step, wcfg.steps, loss.item(), time.perf_counter() - started)
            last = time.perf_counter()
    vae.eval()
    with torch.no_grad():  # on the train clips at each size
        mse = torch.stack([((vae.decode(vae.encode(c[:8]).latent_dist.mean).sample.clamp(-1, 1) - c[:8]) / 2).pow(2).mean()
                           for c in clips.values()]).mean()
    with tempfile.TemporaryDirectory(prefix="pyratok-vae-") as tmp:
        vae.save_pretrained(tmp)
        storage.upload_dir(tmp, out)
    result = WarmupResult(vae_uri=out, steps=wcfg.steps, clips=len(clips[sizes[0]]), final_l1=loss.item(),
                          train_psnr=float(-10 * torch.log10(mse)), wall_s=time.perf_counter() - started)
    log.info("vae warm-up: %s", asdict(result))
    return result
