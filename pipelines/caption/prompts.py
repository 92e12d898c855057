"""Prompt templates: the chat messages the captioner gets for one clip."""

from __future__ import annotations

import json

from pyratok.pipelines.caption.config import DETAILED_PROMPT, STRUCTURED_PROMPT, PromptConfig

VIDEO_PAD = "<|video_pad|>"


def instruction(cfg: PromptConfig) -> str:
    """The user instruction text of a prompt config (custom text wins over the template)."""
    fields = ", ".join(json.dumps(f) for f in cfg.fields)
    if cfg.text:
        return cfg.text.replace("{fields}", fields)
    if cfg.template == "structured":
        return STRUCTURED_PROMPT.format(fields=fields)
    return DETAILED_PROMPT


def chat_messages(cfg: PromptConfig) -> list[dict]:
    """OpenAI/HF-style chat: optional system turn, then one user turn with the video and the instruction."""
    messages: list[dict] = []
    if cfg.system:
        messages.append({"role": "system", "content": cfg.system})
    messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": instruction(cfg)}]})
    return messages


def render_prompt(tokenizer, chat_template: str | None, cfg: PromptConfig) -> str:
    """The prompt text with ONE ``<|video_pad|>`` placeholder (expanded per clip to its token count)."""
    text = tokenizer.apply_chat_template(
        chat_messages(cfg), chat_template=chat_template, tokenize=False, add_generation_prompt=True
    )
    if text.count(VIDEO_PAD) != 1:
        raise ValueError(
            f"the model's chat template produced {text.count(VIDEO_PAD)} {VIDEO_PAD} placeholders for one video; "
            "is this a Qwen2.5-VL checkpoint?"
        )
    return text


def expand_video_placeholder(prompt: str, num_tokens: int) -> str:
    """Repeat the placeholder once per merged vision token, as the Qwen2.5-VL processor does."""
    return prompt.replace(VIDEO_PAD, VIDEO_PAD * num_tokens, 1)
