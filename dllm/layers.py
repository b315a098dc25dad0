"""The layers more than one family is built from, in one place so that no family file imports
another: a fix to RoPE or to the cache seam lands in every family at once.

Only what is the same to the operation lives here. What differs by a module name (the
checkpoint's keys) stays in its family file; where such a copy is kept on purpose it says
`# Copied from unmaskd.dllm.<file>.<name>`, and tests/test_copies.py holds it to its source.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from unmaskd.dllm.backend import KVWriter, block_causal_bias
from unmaskd.dllm.family import DiffusionLM


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as LLaDA does, whatever the weights' dtype.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf.to(x.dtype)) * self.weight


class MLP(nn.Module):
    """SwiGLU, down(silu(gate(x)) * up(x)), without biases: Qwen's layout (Dream, SDAR, LLaDA2's
    dense layers and experts). LLaDA names its weights otherwise (ff_proj, up_proj, ff_out)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rotary_tables(positions: torch.Tensor, dim: int, theta: float):
    """cos/sin tables [B, 1, T, dim] in fp32 for rotate-half RoPE (LLaDA/OLMo layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device,
                                             dtype=torch.float32) / dim))
    angles = positions.float()[:, None, :, None] * inv_freq
    angles = torch.cat([angles, angles], -1)
    return angles.cos(), angles.sin()


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], -1) * sin).to(x.dtype)


def token_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    positions: torch.Tensor | None) -> torch.Tensor:
    """Positions [B, T]: the caller's, else counting real tokens only (attention_mask.cumsum
    - 1), so that left padding does not shift a row's positions (nor move its blocks)."""
    if positions is not None:
        return positions
    if attention_mask is not None:
        return (attention_mask.bool().long().cumsum(-1) - 1).clamp(min=0)
    return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)


def padding_bias(attention_mask: torch.Tensor | None, dtype: torch.dtype
                 ) -> torch.Tensor | None:
    """Additive key mask [B, 1, 1, T] of a bidirectional model: padding is never attended."""
    if attention_mask is None:
        return None
    keep = attention_mask.bool()
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    return bias.masked_fill(~keep, float("-inf"))[:, None, None, :]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
           kv: KVWriter | None, layer: int) -> torch.Tensor:
    """Attention of q [B, H, T, d] over k, v [B, H_kv, T, d] (after RoPE), through the engine's
    cache writer when it passes one (which may hand back its own mask), -> [B, T, H * d]."""
    if kv is not None:
        k, v, cached_bias = kv(layer, k, v)
        bias = bias if cached_bias is None else cached_bias
    att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                         enable_gqa=k.shape[1] != q.shape[1])
    B, _, T, _ = q.shape
    return att.transpose(1, 2).reshape(B, T, -1)


class BlockCausalLM(DiffusionLM):
    """The model of the Qwen-layout block-diffusion families (SDAR, LLaDA2): the decoder
    `model` (embedding, `layers`, `norm`), then `lm_head`, or the embedding when the config ties
    them. Each layer is called as `layer(x, rope, bias, kv, index)`; attention is block-causal
    over blocks of `config.block_size` aligned to position 0, and RoPE turns the first
    `config.rotary_dim` channels of each head. The row at position j predicts position j."""

    logit_offset = 0
    block_causal = True

    def __init__(self, cfg, model: nn.Module):
        super().__init__()
        self.config = cfg
        self.model = model
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def tied_keys(self) -> tuple[str, ...]:
        # a tied checkpoint may still carry its head's copy; the loader drops it
        return ("lm_head.weight",) if self.config.tie_word_embeddings else ()

    @property
    def kv_layout(self) -> tuple[int, int, int]:
        cfg = self.config
        return cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, kv: KVWriter | None = None
                ) -> torch.Tensor:
        embed = self.model.get_input_embeddings()
        x = embed(input_ids)
        positions = token_positions(input_ids, attention_mask, positions)
        bias = block_causal_bias(positions, positions, self.block_size, attention_mask, x.dtype)
        rope = rotary_tables(positions, self.config.rotary_dim, self.config.rope_theta)
        for layer, block in enumerate(self.model.layers):
            x = block(x, rope, bias, kv, layer)
        x = self.model.norm(x)
        head = embed if self.config.tie_word_embeddings else self.lm_head
        return F.linear(x, head.weight)
