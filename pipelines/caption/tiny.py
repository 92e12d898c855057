"""A tiny, offline Qwen2.5-VL checkpoint: random weights, real file layout.

``pyratok caption init-tiny --out DIR`` writes what a Hub snapshot of
Qwen2.5-VL holds (config.json, generation_config.json, safetensors weights,
tokenizer.json + tokenizer_config.json, chat_template.json,
preprocessor_config.json), just small: the pipeline, tests and the embedded
default load it with the same ``from_pretrained`` calls as a real checkpoint.
Its captions are nonsense; everything around them is real.

The tokenizer is a byte-level BPE (Qwen2's pre-tokenizer regex) trained here
with ``tokenizers`` on generated caption-like text, with Qwen2.5-VL's special
tokens, so chat templating, video placeholders and decoding behave as in the
real model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pyratok.core.logging import get_logger

log = get_logger(__name__)

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip

# Qwen2's pre-tokenizer split (contractions, letters, single digits, punctuation runs, whitespace).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The Qwen2.5-VL chat template (as shipped in the checkpoint's chat_template.json).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_SUBJECTS = "a woman|a man|a child|a dog|a cat|two people|a group of friends|a cyclist|a car|a train|a bird|a horse|a chef|a dancer|a surfer|a drone|an old fisherman|a red kite|a small boat|a crowd".split("|")
_ACTIONS = "walks slowly|runs|turns around|smiles|jumps|rides|drives|flies|dances|cooks|waves|looks at the camera|sits down|stands still|climbs|swims|laughs|points forward|carries a bag|opens a door".split("|")
_PLACES = "along a beach at sunset|through a busy city street|in a quiet forest|across a snowy field|inside a bright kitchen|on a mountain trail|near a calm lake|under neon lights at night|in a desert|beside an old stone wall|on a crowded market|over green hills|in a modern office|at a train station|in a rainy alley".split("|")
_CAMERA = "The camera pans left|The camera pans right|The camera tilts up|The camera slowly zooms in|The camera tracks the subject|A static wide shot|A close-up shot|An aerial shot|A handheld shot follows|The camera dollies forward".split("|")
_LIGHT = "warm golden light|soft diffuse light|harsh midday sun|cool blue tones|dramatic shadows|natural daylight|flickering neon light|overcast grey light".split("|")
_STYLE = "cinematic|documentary|realistic|vibrant|moody|calm|energetic|dreamy|vintage|minimalist".split("|")


def caption_corpus(n: int, seed: int) -> list[str]:
    """Generated caption-like sentences (the tokenizer's training text; no network, deterministic)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        lines.append(
            f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_ACTIONS)} {rng.choice(_PLACES)}. "
            f"{rng.choice(_CAMERA)} in {rng.choice(_LIGHT)}, giving a {rng.choice(_STYLE)} mood. "
            f"Shot {rng.randint(1, 99)} lasts {rng.randint(1, 30)} seconds."
        )
    return lines


def build_tokenizer(vocab_size: int, seed: int):
    """A Qwen2-style byte-level BPE tokenizer with Qwen2.5-VL's special tokens, as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = caption_corpus(4000, seed) + [CHAT_TEMPLATE, "You are a helpful assistant."]
    from pyratok.pipelines.caption.config import DETAILED_PROMPT, STRUCTURED_PROMPT, ULTRAVIDEO_FIELDS

    corpus += [DETAILED_PROMPT, STRUCTURED_PROMPT, *ULTRAVIDEO_FIELDS]
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=32768,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
    )


def tiny_config(tokenizer, *, hidden: int = 64, layers: int = 2, vision_hidden: int = 32, vision_depth: int = 2):
    """A Qwen2.5-VL config with real geometry (patch 14, merge 2, temporal 2) and tiny widths."""
    from transformers import Qwen2_5_VLConfig

    ids = tokenizer.convert_tokens_to_ids
    heads = max(2, hidden // 16)
    head_dim = hidden // heads
    half = head_dim // 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]  # same 1:1.5:1.5 split as [16, 24, 24]
    vocab = -(-len(tokenizer) // 64) * 64
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
            bos_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2,
            num_heads=2,
            in_channels=3,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            tokens_per_second=2,
            window_size=112,
            out_hidden_size=hidden,
            fullatt_block_indexes=[vision_depth - 1],
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def init_tiny(out_dir: str | Path, *, seed: int = 0, vocab_size: int = 2048, hidden: int = 64, layers: int = 2) -> Path:
    """Write the tiny offline Qwen2.5-VL checkpoint to ``out_dir`` (created; existing files are replaced)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size, seed)
    config = tiny_config(tokenizer, hidden=hidden, layers=layers)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
        repetition_penalty=1.05,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # The processor-side files of a Qwen2.5-VL snapshot: pixel statistics + geometry, and the chat template.
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=56 * 56, max_pixels=28 * 28 * 1280
    )
    image_processor.save_pretrained(out)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    pre["processor_class"] = "Qwen2_5_VLProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    log.info("wrote the tiny offline Qwen2.5-VL (%d params) to %s", sum(p.numel() for p in model.parameters()), out)
    return out
