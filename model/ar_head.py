"""AR head (global alignment): a causal model over [text prefix] + level-1 tokens <Q-SEP> ... level-L tokens.

Each visual token is predicted from everything before it as its 16 bits: the
loss is the sum of the bits' binary cross-entropies, which is the exact
log-likelihood under a factorized (per-bit) output. Inputs are the
straight-through bits, so the loss reaches the quantizers. The sequence covers
one aligned space-time window (``ar_window``) so its length is bounded by
``token_budget`` whatever the video size.

Backbones: :class:`CausalTransformer` (small, the tiny/local default) or any HF causal LM
(:class:`HfCausalBackbone`) fed ``inputs_embeds``. The paper aligns "through the pretrained Qwen2.5-VL
(3B)", so the cluster and paper presets use its language model: the text encoder's own copy (frozen,
bf16, optionally 4-bit), LoRA (peft, r16/a32) on every attention and MLP projection, the 16 bits projected
in (``bits_in``) and out (``bits_out``), the LM's gradient checkpointing on. Sharing keeps one copy of the
3B LM per GPU; the text encoder switches the adapters off while it embeds captions
(``text_encoder.frozen_base``), so the text targets stay the pretrained model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pyratok.model.ar_window import Window, choose_window
from pyratok.model.config import ArHeadConfig
from pyratok.model.grid import Grid
from pyratok.model.text_encoder import TextEmbedding


class Block(nn.Module):
    def __init__(self, *, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.norm2(x))


class CausalTransformer(nn.Module):
    """Pre-norm causal transformer with learned absolute positions."""

    has_positions = False  # positions are added by ArHead

    def __init__(self, *, dim: int, layers: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(Block(dim=dim, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        s = x.shape[1]
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        # Every query also sees itself, so left-padding rows are never fully masked (no NaN).
        mask = (causal & key_mask[:, None, :]) | torch.eye(s, dtype=torch.bool, device=x.device)
        mask = mask[:, None]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


class HfCausalBackbone(nn.Module):
    """An HF causal LM's decoder stack (``AutoModel``) run on ``inputs_embeds``.

    ``lora_rank``: peft LoRA on every attention and MLP projection, the only LM weights that train (the
    paper adapts its frozen Qwen2.5-VL this way); ``checkpointing``: the LM's own gradient checkpointing.
    """

    has_positions = True
    LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __init__(self, model: nn.Module, *, trainable: bool = False, lora_rank: int = 0, lora_alpha: float = 32.0,
                 checkpointing: bool = False):
        super().__init__()
        self.model = model
        self.dim = int(model.config.hidden_size)
        self.model.requires_grad_(trainable)
        if lora_rank:
            from peft import LoraConfig, inject_adapter_in_model
            from peft.tuners.tuners_utils import cast_adapter_dtype

            targets = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules()} & set(self.LORA_TARGETS))
            if not targets:
                raise ValueError(f"ar.hf_lora_rank: {type(model).__name__} has none of {self.LORA_TARGETS} to adapt")
            inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules=targets), model,
                                    adapter_name="ar")
            cast_adapter_dtype(model, "ar", autocast_adapter_dtype=True)  # fp32 adapters on a bf16 base
        if checkpointing and (trainable or lora_rank):
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name is deprecated
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        dtype = self.model.get_input_embeddings().weight.dtype
        positions = (key_mask.long().cumsum(1) - 1).clamp_min(0)
        out = self.model(inputs_embeds=x.to(dtype), attention_mask=key_mask.long(), position_ids=positions,
                         use_cache=False)  # one pass over the window: a KV cache would only hold memory
        return out.last_hidden_state.float()


@dataclass
class ArResult:
    loss: torch.Tensor
    """Mean over predicted tokens of the summed per-bit BCE (nats per token)."""
    bit_accuracy: torch.Tensor
    tokens: int
    window: Window


class ArHead(nn.Module):
    def __init__(self, *, cfg: ArHeadConfig, code_bits: int, text_dim: int, num_levels: int, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        dim = backbone.dim
        self.bits_in = nn.Linear(code_bits, dim)
        self.text_in = nn.Linear(text_dim, dim) if cfg.max_text_tokens > 0 else None
        self.level_embed = nn.Parameter(torch.zeros(num_levels, dim))
        self.bos = nn.Parameter(torch.zeros(dim))
        self.sep = nn.Parameter(torch.zeros(dim))  # <Q-SEP>
        max_len = cfg.max_text_tokens + 1 + cfg.token_budget + num_levels - 1
        self.positions = None if backbone.has_positions else nn.Parameter(torch.zeros(max_len, dim))
        self.bits_out = nn.Linear(dim, code_bits)
        for p in (self.level_embed, self.bos, self.sep) + ((self.positions,) if self.positions is not None else ()):
            nn.init.normal_(p, std=0.02)

    @classmethod
    def from_config(cls, cfg: ArHeadConfig, *, code_bits: int, text_dim: int, num_levels: int,
                    text_model: nn.Module | None = None, storage=None, cache_dir=None, base_dir=None) -> "ArHead":
        if cfg.backend == "transformer":
            backbone = CausalTransformer(dim=cfg.dim, layers=cfg.layers, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                                         dropout=cfg.dropout)
        elif cfg.hf_path is None:
            if text_model is None:
                raise ValueError("ar.backend=hf with no ar.hf_path needs the text encoder's model to share")
            if cfg.hf_trainable:
                raise ValueError("ar.hf_trainable=true needs its own ar.hf_path (the shared text encoder stays frozen; "
                                 "ar.hf_lora_rank adapts the shared LM instead)")
            backbone = HfCausalBackbone(text_model, lora_rank=cfg.hf_lora_rank, lora_alpha=cfg.hf_lora_alpha,
                                        checkpointing=cfg.hf_gradient_checkpointing)
        else:
            from pyratok.model.text_encoder import DTYPES, load_hf_text_model

            _, model = load_hf_text_model(cfg.hf_path, dtype=DTYPES[cfg.hf_dtype], load_in_4bit=cfg.hf_load_in_4bit,
                                          storage=storage, cache_dir=cache_dir, base_dir=base_dir)
            backbone = HfCausalBackbone(model, trainable=cfg.hf_trainable, lora_rank=cfg.hf_lora_rank,
                                        lora_alpha=cfg.hf_lora_alpha, checkpointing=cfg.hf_gradient_checkpointing)
        return cls(cfg=cfg, code_bits=code_bits, text_dim=text_dim, num_levels=num_levels, backbone=backbone)

    def _text_prefix(self, text: TextEmbedding | None, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-aligned (left-padded) text prefix so it always ends right before <BOS>."""
        dim = self.bits_in.out_features
        if self.text_in is None or text is None:
            return torch.zeros(batch, 0, dim, device=device), torch.zeros(batch, 0, dtype=torch.bool, device=device)
        length = min(self.cfg.max_text_tokens, text.tokens.shape[1])
        tokens, mask = text.tokens[:, :length], text.mask[:, :length]
        real = mask.long().sum(1)
        idx = torch.arange(length, device=device)[None] - (length - real)[:, None]
        valid = idx >= 0
        gathered = torch.gather(tokens, 1, idx.clamp_min(0)[..., None].expand(-1, -1, tokens.shape[-1]))
        return self.text_in(gathered.to(self.bits_in.weight.dtype)) * valid[..., None], valid

    def choose_window(self, coarse_shape: tuple[int, int, int], grids: list[Grid], *,
                      generator: torch.Generator | None = None) -> Window:
        """Random in training, anchored at frame 0 / the centre otherwise."""
        return choose_window(coarse_shape, grids, self.cfg.token_budget, generator=generator, random=self.training)

    def forward(self, level_bits: list[torch.Tensor], grids: list[Grid], text: TextEmbedding | None, *,
                generator: torch.Generator | None = None) -> ArResult:
        """``level_bits``: per level (B, t, h, w, bits) straight-through bits."""
        window = self.choose_window(tuple(level_bits[-1].shape[1:4]), grids, generator=generator)
        pieces = []
        for bits, grid in zip(level_bits, grids):
            ts, ys, xs = window.level_slices(grid, grids[-1])
            pieces.append(bits[:, ts, ys, xs])
        return self.forward_window(pieces, text, window)

    def forward_window(self, window_bits: list[torch.Tensor], text: TextEmbedding | None, window: Window) -> ArResult:
        """``window_bits``: per level the window's (B, t, h, w, bits) bits, already cut out (tiled training)."""
        batch, device = window_bits[0].shape[0], window_bits[0].device
        prefix, prefix_mask = self._text_prefix(text, batch, device)
        pieces = [prefix, self.bos.expand(batch, 1, -1)]
        masks = [prefix_mask, torch.ones(batch, 1, dtype=torch.bool, device=device)]
        targets, predicted_at = [], []
        position = prefix.shape[1] + 1
        for level, bits in enumerate(window_bits):
            if level > 0:
                pieces.append(self.sep.expand(batch, 1, -1))
                masks.append(masks[1])
                position += 1
            tokens = bits.reshape(batch, -1, bits.shape[-1])
            pieces.append(self.bits_in(tokens.to(self.bits_in.weight.dtype)) + self.level_embed[level])
            masks.append(torch.ones(batch, tokens.shape[1], dtype=torch.bool, device=device))
            targets.append(tokens.detach() > 0)
            # token k is predicted by the hidden state right before it
            predicted_at.append(torch.arange(position - 1, position - 1 + tokens.shape[1], device=device))
            position += tokens.shape[1]
        x, key_mask = torch.cat(pieces, 1), torch.cat(masks, 1)
        if self.positions is not None:
            x = x + self.positions[: x.shape[1]]
        logits = self.bits_out(self.backbone(x, key_mask))
        index = torch.cat(predicted_at)
        pred = logits[:, index].float()
        target = torch.cat(targets, 1).float()
        loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none").sum(-1).mean()
        accuracy = ((pred > 0) == (target > 0)).float().mean()
        return ArResult(loss=loss, bit_accuracy=accuracy.detach(), tokens=int(index.numel()), window=window)
