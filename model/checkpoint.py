"""The PyraTok checkpoint format (``save_pretrained`` / ``from_pretrained``).

A checkpoint folder (local or s3://) holds:
- ``config.json``: ``{"format": "pyratok", "version": 1, "model": <ModelConfig>}``;
- ``model.safetensors``: what PyraTok learns — encoder (and decoder) LoRA, LaPQ,
  semantic head, fusion, AR head (and the decoder when it is fully trainable);
- base models only when they have no other home: a randomly initialized VAE or
  DINO is written to ``vae/`` / ``dino/``, and bases given by a path relative to
  the checkpoint are copied along. Absolute, ``s3://`` and ``pkg:`` bases are
  referenced, never copied (production checkpoints stay small).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from pyratok.core.storage import Storage, is_s3
from pyratok.model.config import ModelConfig
from pyratok.model.sources import is_reference, local_dir, resolve

FORMAT = "pyratok"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FROZEN_PREFIXES = ("text_encoder.", "dino.", "lpips.")


def persistent_keys(state_keys, config: ModelConfig) -> list[str]:
    """State-dict keys a checkpoint stores: everything except frozen base weights."""
    keep = []
    trainable_decoder = ("backbone.vae.decoder.", "backbone.vae.post_quant_conv.")
    for key in state_keys:
        if key.startswith(FROZEN_PREFIXES):
            continue
        if key.startswith("ar_head.backbone.model.") and not (config.ar.hf_trainable or "lora_" in key):
            continue  # the LM's frozen base (its LoRA, when ar.hf_lora_rank, is what the AR head learns)
        if key.startswith("backbone.vae."):
            if "lora_" not in key and not (config.backbone.decoder == "full" and key.startswith(trainable_decoder)):
                continue
        keep.append(key)
    return keep


def _is_relative(path: str | None, base: str | None) -> bool:
    return path is not None and not is_reference(path, base)


def write_checkpoint(model, dest: str, *, storage: Storage | None = None) -> None:
    from safetensors.torch import save_file

    from pyratok.model.backbone import build_random_vae
    from pyratok.model.dino import build_random_dino

    storage = storage or Storage()
    cfg = model.config.model_copy(deep=True)
    with tempfile.TemporaryDirectory(prefix="pyratok-ckpt-") as tmp:
        out = Path(tmp) if is_s3(dest) else Path(dest)
        out.mkdir(parents=True, exist_ok=True)
        bb, dino = cfg.backbone, cfg.dino
        if bb.path is None:
            build_random_vae(bb.kind, bb.arch, bb.init_seed).save_pretrained(str(out / "vae"))
            cfg.backbone = bb.model_copy(update={"path": "vae", "subfolder": None, "arch": {}})
        elif _is_relative(bb.path, model.source_dir):
            _copy_base(model.source_dir, bb.path, out, storage, cfg.cache_dir)
        if dino.path is None and model.dino is not None:
            build_random_dino(dino.kind, dino.arch, dino.init_seed).save_pretrained(str(out / "dino"))
            cfg.dino = dino.model_copy(update={"path": "dino", "arch": {}})
        elif _is_relative(dino.path, model.source_dir):
            _copy_base(model.source_dir, dino.path, out, storage, cfg.cache_dir)
        for rel in (cfg.text_encoder.path, cfg.ar.hf_path):
            if _is_relative(rel, model.source_dir):
                _copy_base(model.source_dir, rel, out, storage, cfg.cache_dir)
        state = model.state_dict()
        tensors = {k: state[k].detach().cpu().contiguous() for k in persistent_keys(state, model.config)}
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
        (out / CONFIG_FILE).write_text(json.dumps(
            {"format": FORMAT, "version": VERSION, "model": cfg.model_dump(mode="json")}, indent=2))
        if is_s3(dest):
            storage.upload_dir(out, dest)


def _copy_base(source_dir: str | None, rel: str, out: Path, storage: Storage, cache_dir) -> None:
    if source_dir is None:
        source = Path(rel).resolve()
    else:
        source = local_dir(resolve(rel, source_dir), storage=storage, cache_dir=cache_dir)
    target = out / rel
    if source.resolve() == target.resolve():
        return
    shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".pyratok-complete"))


def read_checkpoint(path: str, *, storage: Storage | None = None, cache_dir=None) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    """(local dir, config dict, weights) of a checkpoint folder."""
    from safetensors.torch import load_file

    where = local_dir(path, storage=storage, cache_dir=cache_dir)
    config_file = where / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: not a PyraTok checkpoint (no {CONFIG_FILE})")
    meta = json.loads(config_file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: {CONFIG_FILE} is not a PyraTok config (format={meta.get('format')!r})")
    if int(meta.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: checkpoint version {meta['version']} is newer than this pyratok ({VERSION})")
    weights = where / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE}")
    return where, meta["model"], load_file(str(weights))


def load_weights(model, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """Strict on what a checkpoint must contain: every persistent key present, nothing unknown."""
    state_keys = model.state_dict().keys()
    expected = set(persistent_keys(state_keys, model.config))
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - set(state_keys))
    if missing or unexpected:
        raise ValueError(f"{source}: checkpoint does not match the model config: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    state = model.state_dict()
    wrong = [f"{k} {tuple(tensors[k].shape)} vs {tuple(state[k].shape)}" for k in sorted(expected)
             if tensors[k].shape != state[k].shape]
    if wrong:
        raise ValueError(f"{source}: checkpoint shapes do not match the model config: {wrong[:3]}")
    model.load_state_dict({k: v for k, v in tensors.items() if k in expected}, strict=False)
