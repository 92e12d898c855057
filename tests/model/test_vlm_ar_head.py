"""The paper's AR head: the VLM's (here a tiny Qwen2's) language model from a path, frozen, with LoRA; bits in and out.

The tiny Qwen2 is built offline from a config with random weights and saved with the bundled MiniLM tokenizer,
then loaded back through the real paths: ``text_encoder.path`` (shared with the AR head) or ``ar.hf_path``.
"""

from __future__ import annotations

import pytest
import torch

from pyratok.model.ar_head import HfCausalBackbone
from pyratok.model.text_encoder import frozen_base
from tests.model.conftest import build, clip
from tests.model.test_text_encoder import save_with_minilm_tokenizer

QWEN_AR = {"backend": "hf", "hf_lora_rank": 4, "hf_lora_alpha": 8, "hf_dtype": "float32", "token_budget": 128,
           "max_text_tokens": 8}


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2))
    return save_with_minilm_tokenizer(lm, tmp_path_factory.mktemp("qwen2") / "lm")


def vlm_model(qwen_dir, **ar):
    return build("wan2.2", text_encoder={"path": qwen_dir, "pooling": "last"}, ar={**QWEN_AR, **ar},
                 losses={"ar": {"enabled": True}}).train()


def lm_parameters(model):
    return dict(model.ar_head.backbone.model.named_parameters())


def test_shared_lm_trains_only_its_lora_and_the_captions_stay_the_base_models(qwen_dir):
    model = vlm_model(qwen_dir)
    backbone = model.ar_head.backbone
    assert isinstance(backbone, HfCausalBackbone) and backbone.model is model.text_encoder.model  # one copy
    params = lm_parameters(model)
    lora = {n for n in params if "lora_" in n}
    # every attention and MLP projection of both layers: A and B each
    assert len(lora) == 2 * 7 * 2 and {n for n, p in params.items() if p.requires_grad} == lora
    assert all(params[n].dtype == torch.float32 for n in lora)

    texts = ["a red car on a road", "waves on a beach"]
    before = model.text_encoder(texts)
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): make it change what the LM computes
        for name in lora:
            if "lora_B" in name:
                params[name].normal_(std=0.5)
    after = model.text_encoder(texts)
    assert torch.equal(before.tokens, after.tokens)  # the captions are embedded by the frozen base
    x = torch.randn(1, 6, backbone.dim)
    mask = torch.ones(1, 6, dtype=torch.bool)
    adapted = backbone(x, mask)
    with frozen_base(backbone.model):
        plain = backbone(x, mask)
    assert (adapted - plain).abs().max() > 1e-3  # ... while the AR head runs with its adapters

    model.zero_grad(set_to_none=True)
    out = model(clip(5, 32, 48, batch=2, seed=1), texts)
    out.loss.backward()
    assert "ar" in out.losses and torch.isfinite(out.losses["ar"])
    assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in lora)
    assert all(p.grad is None for n, p in params.items() if n not in lora)  # the base stays frozen
    assert model.ar_head.bits_in.weight.grad is not None and model.ar_head.bits_out.weight.grad is not None


def test_lora_round_trips_through_a_checkpoint(qwen_dir, tmp_path):
    from pyratok.model.tokenizer import PyraTok

    model = vlm_model(qwen_dir)
    with torch.no_grad():
        for name, p in lm_parameters(model).items():
            if "lora_B" in name:
                p.normal_(std=0.5)
    model.save_pretrained(str(tmp_path / "ckpt"))
    loaded = PyraTok.from_pretrained(str(tmp_path / "ckpt"))
    a, b = lm_parameters(model), lm_parameters(loaded)
    assert all(torch.equal(a[n], b[n]) for n in a if "lora_" in n)
    x, mask = torch.randn(1, 6, model.ar_head.backbone.dim), torch.ones(1, 6, dtype=torch.bool)
    assert torch.allclose(model.ar_head.backbone(x, mask), loaded.ar_head.backbone(x, mask), atol=1e-6)


def test_own_lm_from_hf_path(qwen_dir):
    model = vlm_model(qwen_dir, hf_path=qwen_dir)
    assert model.ar_head.backbone.model is not model.text_encoder.model
    assert any("lora_" in n for n in lm_parameters(model))
    assert not any("lora_" in n for n, _ in model.text_encoder.model.named_parameters())


def test_four_bit_without_bitsandbytes_or_cuda_says_what_is_missing(qwen_dir):
    with pytest.raises(ValueError, match="4-bit loading needs bitsandbytes"):
        vlm_model(qwen_dir, hf_path=qwen_dir, hf_load_in_4bit=True)


def test_whole_lm_training_and_lora_exclude_each_other():
    from pyratok.model.config import ArHeadConfig

    with pytest.raises(ValueError, match="exclude each other"):
        ArHeadConfig(backend="hf", hf_trainable=True, hf_lora_rank=4)


def test_paper_preset_builds_its_ar_head_on_the_vlm_from_a_path(qwen_dir):
    """configs/paper.yaml's text encoder and AR head as they are, with the tiny Qwen2 at the path the bucket's
    Qwen2.5-VL-3B would be (the VAE and DINO stay tiny): a LoRA r16 AR head on the shared bf16 LM."""
    from pyratok.config import load

    paper = load("paper").model
    text_encoder = {**paper.text_encoder.model_dump(), "path": qwen_dir}
    model = build("wan2.2", text_encoder=text_encoder, ar=paper.ar.model_dump(),
                  losses={"ar": {"enabled": True}}).train()
    lm = model.ar_head.backbone.model
    assert lm is model.text_encoder.model and lm.get_input_embeddings().weight.dtype == torch.bfloat16
    lora = [p for n, p in lm.named_parameters() if "lora_A" in n]
    assert lora and all(p.shape[0] == 16 for p in lora)  # rank 16
    assert model.ar_head.cfg.token_budget == 2048
    out = model(clip(5, 32, 48, batch=1, seed=2), ["a dog runs on grass"])
    out.loss.backward()
    assert torch.isfinite(out.losses["ar"]) and all(p.grad is not None for p in lora)
