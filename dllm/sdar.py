"""SDAR / TraDo (`model_type` "sdar", `SDARForCausalLM`): its config.json, validated, and its
block-diffusion transformer.

Written from JetAstra/SDAR's modeling_sdar.py (a Qwen3 derivative). Per layer: RMSNorm -> q/k/v
projections (no bias) -> RMSNorm of each query and key head over head_dim -> rotate-half RoPE
(rope_theta, absolute positions) -> grouped-query attention, bidirectional inside a block of
`block_size` positions and causal across blocks -> o_proj -> residual; RMSNorm -> SwiGLU MLP ->
residual. Then a final RMSNorm and `lm_head` (the embedding when tie_word_embeddings). The row
at position j predicts position j. Module names follow the checkpoint keys (`model.layers.N.
self_attn.q_proj.weight`, ...), so its safetensors load as they are.

Config values that would change the forward pass in a way this file does not implement are
refused at load by field name: rope_scaling, a sliding window, attention bias, another
activation. The published code ignores `sliding_window` at inference, but a config that turns it
on asks for a different model than the one implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from unmaskd.dllm.backend import (
    ConfigError,
    KVWriter,
    build_config,
    config_kwargs,
    special_token_ids,
)
from unmaskd.dllm.family import Family, ModelConfig
from unmaskd.dllm.layers import MLP, BlockCausalLM, RMSNorm, attend, rotary

# field -> the only values implemented; anything else is refused by name.
_FIXED = {
    "hidden_act": ("silu",),
    "attention_bias": (False,),
    "rope_scaling": (None,),
    "use_sliding_window": (False,),
}
# Training, serving or bookkeeping fields: no effect on the forward pass.
_IGNORED = {
    "attn_implementation", "pad_token_id", "debug", "ep_size", "fuse_cross_entropy",
    "initializer_range", "max_window_layers", "sliding_window", "micro_forward",
    "skip_checkpoint", "use_deepep",
}


@dataclass
class SDARConfig(ModelConfig):
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    mask_token_id: int
    eos_token_id: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    block_size: int = 4
    model_type: str = "sdar"

    def __post_init__(self) -> None:
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("num_attention_heads must divide by num_key_value_heads")
        if self.block_size < 1:
            raise ConfigError(f"config field block_size={self.block_size} must be positive")

    @property
    def max_sequence_length(self) -> int:
        return self.max_position_embeddings

    @property
    def rotary_dim(self) -> int:  # RoPE turns every channel of a head
        return self.head_dim

    @classmethod
    def from_dict(cls, raw: dict, mask_token_id: int | None = None,
                  model_dir: str | Path | None = None) -> SDARConfig:
        kwargs = config_kwargs(cls, raw, _FIXED, _IGNORED)
        special_token_ids(kwargs, mask_token_id, model_dir, "config has no {field} and the "
                          "tokenizer declares no {token}; pass it explicitly")
        return build_config(cls, kwargs)


class Attention(nn.Module):
    def __init__(self, cfg: SDARConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_attention_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_key_value_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_key_value_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * hd, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                bias: torch.Tensor, kv: KVWriter | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        cfg = self.cfg
        # q/k normalised per head, before RoPE (Qwen3's order)
        q = self.q_norm(self.q_proj(x).view(B, T, -1, cfg.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, -1, cfg.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, -1, cfg.head_dim).transpose(1, 2)
        q, k = rotary(q, *rope), rotary(k, *rope)
        return self.o_proj(attend(q, k, v, bias, kv, layer))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: SDARConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                bias: torch.Tensor, kv: KVWriter | None, layer: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, bias, kv, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: SDARConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens


class SDARModel(BlockCausalLM):
    """`forward(input_ids, attention_mask) -> logits [B, T, vocab_size]`; with `kv` (the
    engine's cache writer) and explicit `positions`, the forward of a slice over cached keys."""

    # the released generation settings (4 steps per block of 4)
    sampler_defaults = {"threshold": {"threshold": 0.9}}

    def __init__(self, cfg: SDARConfig):
        super().__init__(cfg, Decoder(cfg))


# the module tree mirrors the checkpoint keys (model.*, lm_head.weight)
ENTRY = Family("sdar", SDARConfig, SDARModel)
