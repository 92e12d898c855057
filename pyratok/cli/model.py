"""``pyratok model init``, ``pyratok tokenize``, ``pyratok reconstruct``: make and use a PyraTok model."""

from __future__ import annotations

import contextlib
import tempfile
from typing import Annotated, Optional

import typer

from pyratok.cli.common import echo, user_errors

model_app = typer.Typer(name="model", help="Create PyraTok model folders.", no_args_is_help=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="PyraTok model folder (save_pretrained output; local or s3://).")]
VideoOpt = Annotated[str, typer.Option("--video", "-v", help="Input video file (local or s3://).")]
TextOpt = Annotated[Optional[str], typer.Option("--text", "-t", help="Caption of the video (conditions the tokens). Default: empty.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 ... Default: cuda if available.")]
MaxFramesOpt = Annotated[Optional[int], typer.Option("--max-frames", min=1, help="Use at most this many leading frames (rounded down to 1+4k).")]
TileOpt = Annotated[Optional[int], typer.Option("--tile", min=16, help="Spatial tile side in pixels (default: model.tiling.tile); tiles carry a halo, so tokens and pixels equal an untiled run's.")]


@model_app.command("init")
def init(
    preset: Annotated[str, typer.Option("--preset", "-p", help="tiny, tiny-wan2.1, wan2.2 or wan2.1.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder to write (local or s3://).")],
    vae: Annotated[Optional[str], typer.Option("--vae", help="Wan VAE dir (diffusers AutoencoderKLWan; local or s3://).")] = None,
    vae_subfolder: Annotated[Optional[str], typer.Option("--vae-subfolder", help="E.g. 'vae' when --vae is a whole Wan pipeline.")] = None,
    text_encoder: Annotated[Optional[str], typer.Option("--text-encoder", help="Text encoder dir (e.g. Qwen2.5-VL; local or s3://).")] = None,
    dino: Annotated[Optional[str], typer.Option("--dino", help="DINOv3/DINOv2 dir (local or s3://), for stage 3.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the freshly initialized LaPQ/heads.")] = 0,
) -> None:
    """Build a fresh PyraTok (tiny: random tiny bases; wan2.x: your base weights) and save it."""
    with user_errors():
        import torch

        from pyratok.core.logging import setup_logging
        from pyratok.core.storage import Storage
        from pyratok.model.presets import PRESETS
        from pyratok.model.presets import preset as make_preset
        from pyratok.model.tokenizer import PyraTok

        setup_logging()
        if preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if preset.startswith("tiny"):
            if vae or text_encoder or dino:
                raise ValueError("--vae/--text-encoder/--dino are for the wan2.2/wan2.1 presets; tiny builds its own")
            cfg = make_preset(preset)
        else:
            if not vae:
                raise ValueError(f"--preset {preset} needs --vae PATH (the Wan VAE weights)")
            if not text_encoder:
                raise ValueError(f"--preset {preset} needs --text-encoder PATH (e.g. Qwen2.5-VL)")
            cfg = make_preset(preset, vae=vae, text_encoder=text_encoder, dino=dino)
            if vae_subfolder:
                cfg.backbone.subfolder = vae_subfolder
        torch.manual_seed(seed)
        model = PyraTok.from_config(cfg, storage=Storage())
        model.save_pretrained(out)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    echo(f"model {preset}: {trainable:,} trainable parameters, tokens on a {model.spatial_multiple}px grid "
         f"(frames 1+{model.temporal_multiple}k) -> {out}")


def _load(model_path: str, device: Optional[str]):
    import torch

    from pyratok.core.logging import setup_logging
    from pyratok.core.storage import Storage
    from pyratok.model.tokenizer import PyraTok

    setup_logging()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = PyraTok.from_pretrained(model_path, storage=Storage()).to(device).eval()
    return model, Storage()


BudgetOpt = Annotated[Optional[float], typer.Option("--memory-budget-gb", min=0.0001, help="Refuse clips that would need more (default: model.tiling.memory_budget_gb, else 80% of available memory).")]


@contextlib.contextmanager
def _stored_clip(model, storage, video_path: str, max_frames: Optional[int], tile: Optional[int], budget: Optional[float],
                 *, decode: bool):
    """The input decoded frame by frame into a disk-backed store, its tiling plan, and the memory check."""
    from pyratok.model.streaming import check_budget
    from pyratok.model.tile_plan import plan_for
    from pyratok.model.video_io import decode_to_store

    with tempfile.TemporaryDirectory(prefix="pyratok-clip-") as tmp, storage.local_copy(video_path) as local:
        clip = decode_to_store(local, tmp, spatial_multiple=model.spatial_multiple,
                               temporal_multiple=model.temporal_multiple, max_frames=max_frames)
        store = clip.store
        if (store.frames, store.height, store.width) != (clip.source_frames, *clip.source_size):
            echo(f"input {clip.source_frames}x{clip.source_size[0]}x{clip.source_size[1]} -> "
                 f"{store.frames}x{store.height}x{store.width} (frames 1+{model.temporal_multiple}k, "
                 f"sides multiples of {model.spatial_multiple})")
        plan = plan_for(model, tile=tile, clip=(store.height, store.width))
        shape = (1, store.frames, store.height, store.width)
        check_budget(model, plan, shape, name=video_path, decode=decode,
                     budget_gb=budget if budget is not None else model.config.tiling.memory_budget_gb)
        yield clip, plan, shape, tmp


def tokenize(
    model: ModelOpt,
    video: VideoOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Output .npz (one int array per level; local or s3://).")],
    text: TextOpt = None,
    tile: TileOpt = None,
    max_frames: MaxFramesOpt = None,
    device: DeviceOpt = None,
    memory_budget_gb: BudgetOpt = None,
) -> None:
    """Tokenize a video into its four-level token pyramid (.npz: level1..level4 + shapes), tile by tile."""
    with user_errors():
        from pyratok.model.pyramid import TokenPyramid
        from pyratok.model.streaming import encode_tiles

        tok, storage = _load(model, device)
        with _stored_clip(tok, storage, video, max_frames, tile, memory_budget_gb, decode=False) as (clip, plan, shape, _):
            ids, _ = encode_tiles(tok, clip.store.crop, shape, tok.embed_text([text or ""], 1), plan=plan)
        pyramid = TokenPyramid(ids, list(tok.lapq.grids), shape[1:], tok.lapq.code_bits)
        storage.write_bytes(out, pyramid.to_npz_bytes())
    shapes = ", ".join(f"L{i}={tuple(s[1:])}" for i, s in enumerate(pyramid.shapes, start=1))
    echo(f"{pyramid.num_tokens} tokens ({shapes}) -> {out}")


def reconstruct(
    model: ModelOpt,
    video: VideoOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Output .mp4 (local or s3://).")],
    text: TextOpt = None,
    tile: TileOpt = None,
    max_frames: MaxFramesOpt = None,
    device: DeviceOpt = None,
    memory_budget_gb: BudgetOpt = None,
) -> None:
    """Tokenize and decode a video tile by tile, streaming frames in and out; prints PSNR/SSIM against the input."""
    with user_errors():
        from pyratok.model.frame_store import FrameStore, to_model_range
        from pyratok.model.losses.recon import ClipScores
        from pyratok.model.streaming import decode_tiles, encode_tiles
        from pyratok.model.video_io import write_frames

        tok, storage = _load(model, device)
        with _stored_clip(tok, storage, video, max_frames, tile, memory_budget_gb, decode=True) as (clip, plan, shape, tmp):
            store = clip.store
            ids, latents = encode_tiles(tok, store.crop, shape, tok.embed_text([text or ""], 1), plan=plan, latents=True)
            tokens = sum(level[0].numel() for level in ids)
            del ids
            recon = FrameStore(f"{tmp}/recon.rgb", *shape[1:])
            decode_tiles(tok, latents, lambda px, t0, y0, x0: recon.put(px, t0=t0, y0=y0, x0=x0), plan=plan)
            scores = ClipScores(store.height, store.width)

            def frames():
                for t in range(store.frames):
                    frame = recon.read(t, t + 1)
                    scores.add(to_model_range(frame)[0, :, 0], store.crop(t, t + 1, 0, store.height, 0, store.width)[0, :, 0])
                    yield frame[0]

            with storage.atomic_write(out) as tmp_out:
                write_frames(tmp_out, frames(), clip.fps, height=store.height, width=store.width)
    echo(f"PSNR {scores.psnr:.2f} dB  SSIM {scores.ssim:.4f}  ({tokens} tokens) -> {out}")
