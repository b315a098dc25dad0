"""LLaDA2.0 / 2.1 (`model_type` "llada2_moe", `LLaDA2MoeModelLM`): its config.json, validated, and
its block-diffusion mixture-of-experts transformer.

Written from inclusionAI's modeling_llada2_moe.py (Hugging Face remote code). Per layer:
RMSNorm -> one fused `query_key_value` projection (query heads, then key heads, then value
heads, each head_dim wide) -> RMSNorm of each query and key head when `use_qk_norm` -> RoPE on
the first head_dim * partial_rotary_factor channels (rotate-half within them; the rest pass
through) -> grouped-query attention, bidirectional inside a block and causal across blocks ->
`dense` -> residual; RMSNorm -> MLP -> residual. Layers below `first_k_dense_replace` have a
dense SwiGLU MLP; the others a mixture of experts:

- router logits in float32, scores = sigmoid(logits);
- selection on scores + expert_bias: the experts fall in n_group groups, each group is scored
  by the sum of its two best, the topk_group best groups stay, and the num_experts_per_tok best
  experts among them are chosen;
- combine weights: the chosen experts' unbiased scores divided by their sum (+1e-20; with one
  expert per token, the score itself), times routed_scaling_factor;
- shared experts (one SwiGLU of width moe_intermediate_size * num_shared_experts) on every
  token, added.

Then a final RMSNorm and `lm_head`. The row at position j predicts position j.

The config carries no mask or EOS id: they come from the tokenizer files' declared mask_token
(`<|mask|>`) and eos_token. Config values the forward would need and this file does not
implement are refused by name: rope_scaling, a sliding window, a score function other than
sigmoid, a router dtype other than fp32, norm_head, split q/k/v weights, norm_topk_prob off
(the published code normalises regardless, so such a config contradicts it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
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

_FIXED = {
    "hidden_act": ("silu",),
    "rope_scaling": (None,),
    "use_sliding_window": (False,),
    "score_function": ("sigmoid",),
    "router_dtype": ("fp32", None),
    "norm_head": (False,),
    "norm_topk_prob": (True,),
    "using_split_qkv_in_self_attention": (False,),
}
# Training, serving or bookkeeping fields: no effect on the forward pass. `rotary_dim` repeats
# head_dim * partial_rotary_factor (checked); `moe_router_enable_expert_bias` is a training
# switch: the forward adds the checkpoint's expert_bias either way.
_IGNORED = {
    "embedding_dropout", "output_dropout", "initializer_range", "max_window_layers",
    "sliding_window", "output_router_logits", "pad_token_id", "dtype", "use_rmsnorm",
    "norm_softmax", "moe_router_enable_expert_bias", "rotary_dim",
    "moe_shared_expert_intermediate_size", "mtp_loss_scaling_factor", "num_nextn_predict_layers",
}


@dataclass
class LLaDA2Config(ModelConfig):
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    mask_token_id: int
    eos_token_id: int
    head_dim: int | None = None
    # defaults below are the published LLaDA2MoeConfig's
    use_qkv_bias: bool = False
    use_bias: bool = True
    use_qk_norm: bool = True
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 16384
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.5
    tie_word_embeddings: bool = False
    num_experts: int | None = 16
    num_shared_experts: int | None = 0
    num_experts_per_tok: int = 2
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    moe_intermediate_size: int | None = None
    first_k_dense_replace: int = 0
    block_size: int = 32  # the released decoding block; the config does not say
    model_type: str = "llada2_moe"
    ZERO_OK = frozenset({"num_shared_experts", "first_k_dense_replace"})  # sizes that may be 0

    def __post_init__(self) -> None:
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if not self.num_key_value_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("num_attention_heads must divide by num_key_value_heads")
        if self.rotary_dim % 2 or self.rotary_dim < 2:
            raise ConfigError(f"config field partial_rotary_factor={self.partial_rotary_factor}"
                              f" leaves {self.rotary_dim} rotary channels (needs an even number)")
        if self.num_experts is not None:
            self._check_routing()

    def _check_routing(self) -> None:
        per_group, rest = divmod(self.num_experts, self.n_group)
        if rest or per_group < 2:  # groups are scored by their two best experts
            raise ConfigError(f"config field n_group={self.n_group} must split num_experts="
                              f"{self.num_experts} into groups of two or more")
        if not 1 <= self.topk_group <= self.n_group:
            raise ConfigError(f"config field topk_group={self.topk_group} must be in "
                              f"1..n_group={self.n_group}")
        if not 1 <= self.num_experts_per_tok <= self.topk_group * per_group:
            raise ConfigError(f"config field num_experts_per_tok={self.num_experts_per_tok} "
                              "exceeds the experts in the kept groups")
        if self.moe_intermediate_size is None:
            raise ConfigError("config has no moe_intermediate_size")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def max_sequence_length(self) -> int:
        return self.max_position_embeddings

    @classmethod
    def from_dict(cls, raw: dict, mask_token_id: int | None = None,
                  model_dir: str | Path | None = None) -> LLaDA2Config:
        kwargs = config_kwargs(cls, raw, _FIXED, _IGNORED)
        special_token_ids(kwargs, mask_token_id, model_dir, "the tokenizer files declare no "
                          "{token} (LLaDA2's config has no {field}); pass it explicitly")
        cfg = build_config(cls, kwargs)
        if raw.get("rotary_dim") not in (None, cfg.rotary_dim):
            raise ConfigError(f"config field rotary_dim={raw['rotary_dim']!r} disagrees with "
                              f"head_dim * partial_rotary_factor = {cfg.rotary_dim}")
        return cfg


class Attention(nn.Module):
    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        self.cfg = cfg
        heads = cfg.num_attention_heads + 2 * cfg.num_key_value_heads
        self.query_key_value = nn.Linear(cfg.hidden_size, heads * cfg.head_dim,
                                         bias=cfg.use_qkv_bias)
        if cfg.use_qk_norm:
            self.query_layernorm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.key_layernorm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.dense = nn.Linear(cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size,
                               bias=cfg.use_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                bias: torch.Tensor, kv: KVWriter | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        cfg = self.cfg
        qkv = self.query_key_value(x).view(B, T, -1, cfg.head_dim)
        q, k, v = qkv.split([cfg.num_attention_heads, cfg.num_key_value_heads,
                             cfg.num_key_value_heads], dim=2)
        if cfg.use_qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        rd = cfg.rotary_dim
        q = torch.cat([rotary(q[..., :rd], *rope), q[..., rd:]], -1)
        k = torch.cat([rotary(k[..., :rd], *rope), k[..., rd:]], -1)
        return self.dense(attend(q, k, v, bias, kv, layer))


class Gate(nn.Module):
    """The router: `weight` [experts, hidden] and the `expert_bias` buffer of the checkpoint."""

    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(cfg.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, hidden] -> chosen experts [N, k] and their combine weights [N, k] (fp32)."""
        cfg = self.cfg
        scores = F.linear(x.float(), self.weight.float()).sigmoid()
        routing = scores + self.expert_bias  # the bias picks experts but never weighs them
        grouped = routing.view(len(x), cfg.n_group, -1)
        group_score = grouped.topk(2, dim=-1).values.sum(-1)
        kept = group_score.topk(cfg.topk_group, dim=-1).indices
        keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, kept, True)
        routing = grouped.masked_fill(~keep[..., None], float("-inf")).view(len(x), -1)
        chosen = routing.topk(cfg.num_experts_per_tok, dim=-1).indices
        weight = scores.gather(1, chosen)
        if cfg.num_experts_per_tok > 1:
            weight = weight / (weight.sum(-1, keepdim=True) + 1e-20)
        return chosen, weight * cfg.routed_scaling_factor


class MoE(nn.Module):
    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        self.gate = Gate(cfg)
        self.experts = nn.ModuleList(MLP(cfg.hidden_size, cfg.moe_intermediate_size)
                                     for _ in range(cfg.num_experts))
        # the published model builds shared experts whenever the field is set, even to 0
        if cfg.num_shared_experts is not None:
            self.shared_experts = MLP(cfg.hidden_size,
                                      cfg.moe_intermediate_size * cfg.num_shared_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        chosen, weight = self.gate(flat)
        # Each token goes to its experts only; the weighted sum is taken in fp32 as published.
        out = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device)
        for e in chosen.unique().tolist():
            token, slot = (chosen == e).nonzero(as_tuple=True)
            y = self.experts[e](flat[token]).float() * weight[token, slot, None]
            out.index_add_(0, token, y)
        out = out.to(x.dtype).view(x.shape)
        if hasattr(self, "shared_experts"):
            out = out + self.shared_experts(x)
        return out


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LLaDA2Config, index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        moe = cfg.num_experts is not None and index >= cfg.first_k_dense_replace
        self.mlp = MoE(cfg) if moe else MLP(cfg.hidden_size, cfg.intermediate_size)

    # Copied from unmaskd.dllm.sdar.DecoderLayer.forward with self_attn->attention
    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                bias: torch.Tensor, kv: KVWriter | None, layer: int) -> torch.Tensor:
        x = x + self.attention(self.input_layernorm(x), rope, bias, kv, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings


class LLaDA2Model(BlockCausalLM):
    """`forward(input_ids, attention_mask) -> logits [B, T, vocab_size]`; with `kv` (the
    engine's cache writer) and explicit `positions`, the forward of a slice over cached keys."""

    sampler_defaults = {"threshold": {"threshold": 0.95}}  # the model's `generate` default

    def __init__(self, cfg: LLaDA2Config):
        super().__init__(cfg, Decoder(cfg))


# the module tree mirrors the checkpoint keys (model.*, lm_head.weight)
ENTRY = Family("llada2_moe", LLaDA2Config, LLaDA2Model)
