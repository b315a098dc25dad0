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

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from unmaskd.dllm.backend import ConfigError, KVWriter, build_config, config_kwargs
from unmaskd.dllm.llada import RMSNorm, rotary, rotary_tables

WEIGHT_PREFIX = ""  # the module tree is named as the checkpoint keys

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
    "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "initializer_range", "attention_dropout", "sliding_window", "max_window_layers",
    "_name_or_path", "bos_token_id", "output_attentions", "output_hidden_states",
    "return_dict", "use_return_dict",
}


@dataclass
class DreamConfig:
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
        if mask_token_id is not None:
            kwargs["mask_token_id"] = mask_token_id
        for required in ("mask_token_id", "eos_token_id"):
            if kwargs.get(required) is None:
                raise ConfigError(f"config has no {required}; pass it explicitly "
                                  f"(Dream-v0-7B: --mask-token-id 151666)")
        return build_config(cls, kwargs)

    def to_dict(self) -> dict:
        return asdict(self)


class DreamAttention(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        kv_dim = cfg.num_key_value_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=True)
        self.o_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)


class DreamMLP(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)


class DreamLayer(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.cfg = cfg
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = DreamAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = DreamMLP(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None, kv: KVWriter | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        cfg, attn = self.cfg, self.self_attn
        h = self.input_layernorm(x)
        q = attn.q_proj(h).view(B, T, cfg.num_attention_heads, cfg.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(B, T, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(B, T, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        q, k = rotary(q, *rope), rotary(k, *rope)
        if kv is not None:
            k, v, cached_mask = kv(layer, k, v)
            attn_mask = attn_mask if cached_mask is None else cached_mask
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask,
            enable_gqa=cfg.num_key_value_heads != cfg.num_attention_heads)
        x = x + attn.o_proj(att.transpose(1, 2).reshape(B, T, cfg.hidden_size))
        h = self.post_attention_layernorm(x)
        mlp = self.mlp
        return x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))


class DreamBody(nn.Module):
    def __init__(self, cfg: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DreamLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DreamModel(nn.Module):
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
                positions: torch.Tensor | None = None, kv: KVWriter | None = None):
        bias = None
        if attention_mask is not None:
            keep = attention_mask.bool()
            # Positions count real tokens (Dream: attention_mask.cumsum - 1), so left padding
            # does not shift a row's positions; padding is masked out as keys.
            if positions is None:
                positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
            bias = torch.zeros(keep.shape, dtype=torch.float32, device=keep.device)
            bias = bias.masked_fill(~keep, float("-inf"))[:, None, None, :]
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            positions = positions.expand_as(input_ids)
        x = self.model.embed_tokens(input_ids)
        if bias is not None:
            bias = bias.to(x.dtype)
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


config_from_dict = DreamConfig.from_dict
Model = DreamModel
