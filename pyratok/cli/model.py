"""``pyratok model init``, ``pyratok tokenize``, ``pyratok reconstruct``: make and use a PyraTok model."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pyratok.cli.common import echo, user_errors

model_app = typer.Typer(name="model", help="Create PyraTok model folders.", no_args_is_help=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="PyraTok model folder (save_pretrained output; local or s3://).")]
VideoOpt = Annotated[str, typer.Option("--video", "-v", help="Input video file (local or s3://).")]
TextOpt = Annotated[Optional[str], typer.Option("--text", "-t", help="Caption of the video (conditions the tokens). Default: empty.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 ... Default: cuda if available.")]
MaxFramesOpt = Annotated[Optional[int], typer.Option("--max-frames", min=1, help="Use at most this many leading frames (rounded down to 1+4k).")]
TileOpt = Annotated[Optional[int], typer.Option("--tile", min=16, help="Spatial tile size in pixels for large videos (same tokens as untiled).")]


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


def _load_video(model, storage, video_path: str, max_frames: Optional[int]):
    from pyratok.model.video_io import load_video

    with storage.local_copy(video_path) as local:
        clip = load_video(local, spatial_multiple=model.spatial_multiple, temporal_multiple=model.temporal_multiple,
                          max_frames=max_frames)
    t, h, w = clip.video.shape[2:]
    if (t, h, w) != (clip.source_frames, *clip.source_size):
        echo(f"input {clip.source_frames}x{clip.source_size[0]}x{clip.source_size[1]} -> {t}x{h}x{w} "
             f"(frames 1+{model.temporal_multiple}k, sides multiples of {model.spatial_multiple})")
    return clip


def tokenize(
    model: ModelOpt,
    video: VideoOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Output .npz (one int array per level; local or s3://).")],
    text: TextOpt = None,
    tile: TileOpt = None,
    max_frames: MaxFramesOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Tokenize a video into its four-level token pyramid (.npz: level1..level4 + shapes)."""
    with user_errors():
        tok, storage = _load(model, device)
        clip = _load_video(tok, storage, video, max_frames)
        pyramid = tok.encode(clip.video.to(tok.device), [text or ""], tile=tile)
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
) -> None:
    """Tokenize and decode a video; writes the reconstruction and prints PSNR/SSIM against the input."""
    with user_errors():
        from pyratok.model.losses.recon import frames_of, psnr, ssim
        from pyratok.model.video_io import write_video

        tok, storage = _load(model, device)
        clip = _load_video(tok, storage, video, max_frames)
        target = clip.video.to(tok.device)
        pyramid = tok.encode(target, [text or ""], tile=tile)
        recon = tok.decode(pyramid, tile=tile)
        with storage.atomic_write(out) as tmp:
            write_video(tmp, recon[0], clip.fps)
        score_psnr = float(psnr(recon, target))
        score_ssim = float(ssim(frames_of(recon), frames_of(target)))
    echo(f"PSNR {score_psnr:.2f} dB  SSIM {score_ssim:.4f}  ({pyramid.num_tokens} tokens) -> {out}")
