"""LLaDA (`model_type` "llada"): its config.json, validated, and its bidirectional transformer.

Config: real LLaDA configs carry OLMo's training fields; those that cannot change the forward
pass are accepted and ignored. A field whose value changes the forward pass in a way this code
does not implement is refused at load, naming the field, never silently ignored.

Model: functionally identical to LLaDA's "llama" block type. Per layer: RMSNorm -> q/k/v ->
rotary -> full (non-causal) attention with a key-padding mask -> attn_out -> residual; RMSNorm ->
SwiGLU (silu(ff_proj(x)) * up_proj(x)) -> ff_out -> residual. Then ln_f and the output
projection (tied to wte if `weight_tying`). Module names follow LLaDA's checkpoint keys
(`model.transformer.blocks.{i}.q_proj.weight`, ...), so its safetensors load as is. Nothing
about decoding lives here: the engine passes a key/value cache writer (`kv`) when it caches.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from unmaskd.dllm.family import DiffusionLM, Family, ModelConfig
from unmaskd.dllm.layers import (
    RMSNorm,
    attend,
    padding_bias,
    rotary,
    rotary_tables,
    token_positions,
)

# field -> the only value (or values) we implement; anything else is refused.
_FIXED = {
    "block_type": ("llama",),
    "alibi": (False, None),
    "attention_layer_norm": (False, None),
    "multi_query_attention": (False, None),
    "rope": (True, None),
    "layer_norm_type": ("rms", None),
    "activation_type": ("silu", "swiglu", None),
    "input_emb_norm": (False, None),
    "scale_logits": (False, None),
    "clip_qkv": (None,),
    "block_group_size": (1, None),
    "bias_for_layer_norm": (False, None),
    "layer_norm_with_affine": (True, None),
    # unused while attention_layer_norm is off
    "attention_layer_norm_with_affine": (True, False, None),
}
# Training-only or bookkeeping fields: accepted, no effect on inference.
_IGNORED = {
    "init_fn", "init_std", "init_cutoff_factor", "init_device", "precision",
    "residual_dropout", "embedding_dropout", "flash_attention", "mlp_ratio", "alibi_bias_max",
    "rope_full_precision", "weight_tying_init", "new_embedding_init_range",
    "emb_init_std", "softmax_auxiliary_loss", "attention_type", "tie_word_embeddings",
}


@dataclass
class LLaDAConfig(ModelConfig):
    d_model: int
    n_layers: int
    n_heads: int
    mlp_hidden_size: int
    vocab_size: int
    embedding_size: int
    max_sequence_length: int
    mask_token_id: int
    eos_token_id: int
    pad_token_id: int
    n_kv_heads: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    block_type: str = "llama"
    include_bias: bool = False
    include_qkv_bias: bool = False
    weight_tying: bool = False
    model_type: str = "llada"

    def __post_init__(self) -> None:
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ConfigError("d_model must divide by n_heads and n_heads by n_kv_heads")

    @classmethod
    def from_dict(cls, raw: dict, mask_token_id: int | None = None) -> LLaDAConfig:
        kwargs = config_kwargs(cls, raw, _FIXED, _IGNORED)
        special_token_ids(kwargs, mask_token_id, None, "config has no {field}; pass it "
                          "explicitly (LLaDA-8B: --mask-token-id 126336)")
        kwargs.setdefault("embedding_size", kwargs.get("vocab_size"))
        kwargs.setdefault("pad_token_id", kwargs.get("eos_token_id"))
        return build_config(cls, kwargs)


class LLaDABlock(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.cfg = cfg
        head_dim = cfg.d_model // cfg.n_heads
        kv_dim = cfg.n_kv_heads * head_dim
        qkv_bias = cfg.include_bias or cfg.include_qkv_bias
        self.attn_norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, kv_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, kv_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.include_bias)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden_size, bias=cfg.include_bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden_size, bias=cfg.include_bias)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, cfg.d_model, bias=cfg.include_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None, kv: KVWriter | None = None,
                layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        cfg = self.cfg
        hd = cfg.d_model // cfg.n_heads
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, T, cfg.n_heads, hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, cfg.n_kv_heads, hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, cfg.n_kv_heads, hd).transpose(1, 2)
        q, k = rotary(q, *rope), rotary(k, *rope)
        x = x + self.attn_out(attend(q, k, v, attn_mask, kv, layer))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class Transformer(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.embedding_size, cfg.d_model)
        self.blocks = nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        if not cfg.weight_tying:
            self.ff_out = nn.Linear(cfg.d_model, cfg.embedding_size, bias=cfg.include_bias)


class LLaDAModel(DiffusionLM):
    """`forward(input_ids, attention_mask) -> logits [B, T, embedding_size]`; with `kv` (the
    engine's cache writer) and explicit `positions`, the forward of a slice over cached keys."""

    logit_offset = 0  # the logits at column j are LLaDA's prediction for column j

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.config = cfg
        self.transformer = Transformer(cfg)

    @property
    def kv_layout(self) -> tuple[int, int, int]:
        cfg = self.config
        return cfg.n_layers, cfg.n_kv_heads, cfg.d_model // cfg.n_heads

    @property
    def tied_keys(self) -> tuple[str, ...]:
        # a tied checkpoint may still carry the output projection; the loader drops it
        return ("transformer.ff_out.weight",) if self.config.weight_tying else ()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, kv: KVWriter | None = None
                ) -> torch.Tensor:
        t = self.transformer
        x = t.wte(input_ids)
        positions = token_positions(input_ids, attention_mask, positions)
        bias = padding_bias(attention_mask, x.dtype)
        rope = rotary_tables(positions, self.config.d_model // self.config.n_heads,
                             self.config.rope_theta)
        for layer, block in enumerate(t.blocks):
            x = block(x, rope, bias, kv, layer)
        x = t.ln_f(x)
        head = t.wte.weight if self.config.weight_tying else t.ff_out.weight
        logits = F.linear(x, head)
        if not self.config.weight_tying and t.ff_out.bias is not None:
            logits = logits + t.ff_out.bias
        return logits

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


# checkpoint keys are model.transformer.*; the module tree starts at transformer
ENTRY = Family("llada", LLaDAConfig, LLaDAModel, weight_prefix="model.")
