"""The ``transformers`` backend: Qwen2.5-VL via ``from_pretrained`` and batched ``generate``.

Inputs are built as the Qwen2.5-VL processor builds them (chat template, one
``<|video_pad|>`` per merged vision token, ``pixel_values_videos``,
``video_grid_thw``, ``second_per_grid_ts``, ``mm_token_type_ids``), but with
the torch preprocessing of ``vision.py`` instead of the torchvision-based HF
video processor. Prompts are left-padded so every row's generation starts at
the same position.
"""

from __future__ import annotations

import json
from pathlib import Path

from pyratok.core.logging import get_logger
from pyratok.pipelines.caption.backends.base import CaptionBackend, Generation, VideoClip
from pyratok.pipelines.caption.config import CaptionConfig
from pyratok.pipelines.caption.prompts import expand_video_placeholder, render_prompt
from pyratok.pipelines.caption.vision import VisionSpec, seconds_per_grid, video_to_patches

log = get_logger(__name__)

VIDEO_TOKEN_TYPE = 2  # mm_token_type_ids: text 0, image 1, video 2


def read_chat_template(model_dir: Path, tokenizer) -> str | None:
    """The checkpoint's chat template: the tokenizer's own, else chat_template.json / .jinja beside it."""
    if getattr(tokenizer, "chat_template", None):
        return None  # apply_chat_template uses the tokenizer's
    if (model_dir / "chat_template.json").is_file():
        return json.loads((model_dir / "chat_template.json").read_text())["chat_template"]
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text()
    raise ValueError(f"{model_dir}: the checkpoint has no chat template (tokenizer_config, chat_template.json/.jinja)")


def torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


class TransformersBackend(CaptionBackend):
    name = "transformers"

    @classmethod
    def available(cls) -> bool:
        try:
            import transformers  # noqa: F401

            return True
        except ImportError:
            return False

    def __init__(self, *, model_dir: Path, cfg: CaptionConfig):
        super().__init__(model_dir=model_dir, cfg=cfg)
        import torch
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() and cfg.num_gpus_per_actor > 0 else "cpu"
        self.dtype = torch_dtype(cfg.dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, padding_side="left")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        kwargs = {"dtype": self.dtype}
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        self.model = AutoModelForImageTextToText.from_pretrained(self.model_dir, **kwargs).to(self.device).eval()
        self.spec = VisionSpec.from_pretrained(self.model_dir)
        self.video_token_id = int(self.model.config.video_token_id)
        self.prompt = render_prompt(self.tokenizer, read_chat_template(self.model_dir, self.tokenizer), cfg.prompt)
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos])
        log.info(
            "loaded %s (%s, %s) on %s", self.model_dir, type(self.model).__name__, str(self.dtype).split(".")[-1], self.device
        )

    def generation_kwargs(self) -> dict:
        s = self.cfg.sampling
        kwargs = {
            "max_new_tokens": s.max_new_tokens,
            "do_sample": s.do_sample,
            "repetition_penalty": s.repetition_penalty,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self.stop_ids),
        }
        if s.do_sample:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
        else:  # silence "temperature is set but do_sample=False" from the checkpoint's generation_config
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def build_inputs(self, clips: list[VideoClip]) -> dict:
        """Model inputs for a batch of clips: what the HF processor would return, built in torch."""
        import torch

        patches, grids, texts, seconds = [], [], [], []
        for clip in clips:
            flat, grid = video_to_patches(clip.frames, self.spec)
            patches.append(flat)
            grids.append(grid)
            texts.append(expand_video_placeholder(self.prompt, self.spec.num_video_tokens(grid)))
            seconds.append(seconds_per_grid(clip.sample_fps, self.spec))
        enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        input_ids = enc["input_ids"]
        mm_token_type_ids = (input_ids == self.video_token_id).to(torch.int32) * VIDEO_TOKEN_TYPE
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": enc["attention_mask"].to(self.device),
            "pixel_values_videos": torch.cat(patches).to(self.device, self.dtype),
            "video_grid_thw": torch.tensor(grids, dtype=torch.long, device=self.device),
            "second_per_grid_ts": torch.tensor(seconds, dtype=torch.float32, device=self.device),
            "mm_token_type_ids": mm_token_type_ids.to(self.device),
        }

    def generate(self, clips: list[VideoClip]) -> list[Generation]:
        import torch

        if not clips:
            return []
        inputs = self.build_inputs(clips)
        torch.manual_seed(self.batch_seed(clips))
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.generation_kwargs())
        new_tokens = out[:, inputs["input_ids"].shape[1] :].tolist()
        results = []
        for row in new_tokens:
            stop_at = next((i for i, tok in enumerate(row) if tok in self.stop_ids), None)
            kept = row if stop_at is None else row[:stop_at]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            results.append(Generation(text=text, num_tokens=len(kept) + (stop_at is not None), stopped=stop_at is not None))
        return results
