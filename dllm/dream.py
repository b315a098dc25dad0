"""Dream and DiffuCoder (`model_type` "Dream"): their config.json, validated, their bidirectional
Qwen2-layout transformer, and their tokenizer.

Written from the published architecture (DreamLM's Hugging Face release; NVlabs/Fast-dLLM
`dream/model/`). Per layer: RMSNorm -> q/k/v projections (with bias) -> half-split RoPE at
`rope_theta` -> full (non-causal) attention with a key-padding mask and grouped KV heads ->
o_proj (no bias) -> residual; RMSNorm -> SwiGLU (down(silu(gate(x)) * up(x))) -> residual. Then
`model.norm` and an untied `lm_head`. Module names are Dream's checkpoint keys
(`model.layers.N.self_attn.q_proj.weight`, `lm_head.weight`, ...), so its safetensors load as is.

Dream's head is shifted: the logits at position i predict token i + 1 (Dream's generation code
rolls them right by one), which the engine reads from `logit_offset`. Dream has no blocks: its
`diffusion_generate` decodes the whole canvas as one, hence `default_block_length = "full"`.

Nothing from the folder is executed: Dream's tokenizer_config.json names its own
`DreamTokenizer` class (remote code), which is Qwen2's byte-level BPE tokenizer under another
name, so it is loaded with transformers' built-in classes and `trust_remote_code=False`.
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
from unmaskd.dllm.family import DiffusionLM, Family, ModelConfig
from unmaskd.dllm.layers import (
    MLP,
    RMSNorm,
    attend,
    padding_bias,
    rotary,
    rotary_tables,
    token_positions,
)

# field -> the only values we implement; anything else is refused, naming the field.
_FIXED = {
    "hidden_act": ("silu",),
    "rope_scaling": (None,),
    "use_sliding_window": (False, None),
    "tie_word_embeddings": (False, None),
}
# Training-only or bookkeeping fields: accepted, no effect on inference. (sliding_window and
# max_window_layers only matter with use_sliding_window, which is refused above.)
_IGNORED = {
    "dtype", "initializer_range", "sliding_window", "max_window_layers", "output_attentions",
    "output_hidden_states", "return_dict", "use_return_dict",
}


@dataclass
class DreamConfig(ModelConfig):
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    mask_token_id: int
    eos_token_id: int
    pad_token_id: int | None = None
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    model_type: str = "Dream"

    def __post_init__(self) -> None:
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        if (self.hidden_size % self.num_attention_heads
                or self.num_attention_heads % self.num_key_value_heads):
            raise ConfigError("config: hidden_size must divide by num_attention_heads and "
                              "num_attention_heads by num_key_value_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_sequence_length(self) -> int:  # what the engine asks every family for
        return self.max_position_embeddings

    @classmethod
    def from_dict(cls, raw: dict, mask_token_id: int | None = None) -> DreamConfig:
        raw = dict(raw)
        # transformers 5 writes rope_theta inside rope_parameters; only plain RoPE is implemented
        rope = raw.pop("rope_parameters", None)
        if rope is not None:
            if not isinstance(rope, dict) or rope.get("rope_type", "default") != "default":
                raise ConfigError(f"config field rope_parameters={rope!r} is not supported "
                                  "(this implementation needs rope_type 'default')")
            raw.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        if "head_dim" in raw and raw["head_dim"] != raw.get("hidden_size", 0) // max(
                1, raw.get("num_attention_heads", 1)):
            raise ConfigError(f"config field head_dim={raw['head_dim']!r} is not supported "
                              "(this implementation needs hidden_size / num_attention_heads)")
        raw.pop("head_dim", None)
        kwargs = config_kwargs(cls, raw, _FIXED, _IGNORED)
        special_token_ids(kwargs, mask_token_id, None, "config has no {field}; pass it "
                          "explicitly (Dream-v0-7B: --mask-token-id 151666)")
        return build_config(cls, kwargs)


class DreamAttention(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        kv_dim = cfg.num_key_value_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=True)
        self.o_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)


class DreamLayer(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.cfg = cfg
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = DreamAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None, kv: KVWriter | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        cfg, attn = self.cfg, self.self_attn
        h = self.input_layernorm(x)
        q = attn.q_proj(h).view(B, T, cfg.num_attention_heads, cfg.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(B, T, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(B, T, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        q, k = rotary(q, *rope), rotary(k, *rope)
        x = x + attn.o_proj(attend(q, k, v, attn_mask, kv, layer))
        return x + self.mlp(self.post_attention_layernorm(x))


class DreamBody(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DreamLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DreamModel(DiffusionLM):
    """`forward(input_ids, attention_mask) -> logits [B, T, vocab_size]`, row i predicting
    token i + 1; with `kv` (the engine's cache writer) and explicit `positions`, the forward of
    a slice over cached keys."""

    logit_offset = 1  # Dream's shifted head: the logits at column j predict column j + 1
    default_block_length = "full"  # diffusion_generate decodes the canvas as one block

    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.config = cfg
        self.model = DreamBody(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def kv_layout(self) -> tuple[int, int, int]:
        cfg = self.config
        return cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, kv: KVWriter | None = None
                ) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        # Positions count real tokens (Dream: attention_mask.cumsum - 1); padding is masked out
        # as keys.
        positions = token_positions(input_ids, attention_mask, positions)
        bias = padding_bias(attention_mask, x.dtype)
        rope = rotary_tables(positions, self.config.head_dim, self.config.rope_theta)
        for layer, block in enumerate(self.model.layers):
            x = block(x, rope, bias, kv, layer)
        return self.lm_head(self.model.norm(x))


def load_tokenizer(model_dir: Path):
    """The folder's tokenizer without its remote code: tokenizer.json when there is one, else
    Qwen2's tokenizer over vocab.json + merges.txt (DreamTokenizer's files); tokenizer_config.json
    still gives the special tokens and the chat template."""
    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer
    from unmaskd.dllm.checkpoint import CheckpointError, tokenizer_error

    if (model_dir / "tokenizer.json").is_file():
        cls = PreTrainedTokenizerFast
    elif (model_dir / "vocab.json").is_file() and (model_dir / "merges.txt").is_file():
        cls = Qwen2Tokenizer
    else:
        raise CheckpointError(f"{model_dir}: no tokenizer.json, nor vocab.json + merges.txt "
                              "(a Dream folder needs its tokenizer files)")
    try:
        return cls.from_pretrained(str(model_dir), local_files_only=True,
                                   trust_remote_code=False)
    except Exception as e:  # a malformed file raises whatever its parser meets first
        raise tokenizer_error(model_dir, e) from None


# the module tree is named as the checkpoint keys
ENTRY = Family("Dream", DreamConfig, DreamModel, load_tokenizer=load_tokenizer)
