"""Caption set identity: one version per (model, prompt, sampling, frame sampling, post-processing).

Only settings that change what a caption says enter the hash; batch size,
backend, dtype and actor counts do not, so the same settings on a laptop and
on a cluster write to the same caption set (and resume each other).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pyratok.core.config import fingerprint
from pyratok.core.storage import basename, is_s3
from pyratok.pipelines.caption.config import TINY_MODEL, CaptionConfig
from pyratok.pipelines.caption.prompts import instruction


def model_identity(cfg: CaptionConfig) -> str:
    """``caption.model_id`` if set, else the model as given (local paths made absolute)."""
    if cfg.model_id:
        return cfg.model_id
    if not cfg.model:
        raise ValueError("caption.model is not set: pass --model DIR_OR_URI (or set caption.model in the config)")
    if cfg.model == TINY_MODEL or is_s3(cfg.model):
        return cfg.model.rstrip("/")
    return str(Path(cfg.model).expanduser().resolve())


def prompt_spec(cfg: CaptionConfig) -> dict:
    p = cfg.prompt
    spec = {"template": p.template, "system": p.system, "instruction": instruction(p)}
    if p.template == "structured":
        spec.update(fields=list(p.fields), caption_field=p.caption_field)
    return spec


def sampling_spec(cfg: CaptionConfig) -> dict:
    s = cfg.sampling.model_dump(mode="json")
    if not s["do_sample"]:  # greedy decoding ignores these; changing them must not fork the caption set
        for key in ("temperature", "top_p", "top_k", "seed"):
            s.pop(key)
    return s


def version_spec(cfg: CaptionConfig) -> dict:
    return {
        "model": model_identity(cfg),
        "prompt": prompt_spec(cfg),
        "sampling": sampling_spec(cfg),
        "frames": cfg.frames.model_dump(mode="json"),
        "postprocess": cfg.postprocess.model_dump(mode="json"),
    }


def version_id(cfg: CaptionConfig) -> str:
    """The caption set's directory name under ``captions/``: 16 hex chars."""
    return fingerprint(version_spec(cfg))


def prompt_hash(cfg: CaptionConfig) -> str:
    return fingerprint(prompt_spec(cfg))[:12]


def default_version_name(cfg: CaptionConfig) -> str:
    """``<model basename>/<template>``, e.g. ``Qwen2.5-VL-7B-Instruct/detailed`` (the user can pick a name)."""
    if cfg.version_name:
        return cfg.version_name
    model = basename(model_identity(cfg)) or "model"
    suffix = "custom" if cfg.prompt.text else cfg.prompt.template
    return f"{model}/{suffix}"


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]
