"""LLaDA's `config.json`, validated: what we implement, what we ignore, what we refuse.

Real LLaDA configs carry OLMo's training fields; those that cannot change the forward pass are
accepted and ignored. A field whose value changes the forward pass in a way this code does not
implement is refused at load, naming the field, never silently ignored.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """The checkpoint's config asks for something this implementation does not do."""


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
    "init_fn", "init_std", "init_cutoff_factor", "init_device", "precision", "attention_dropout",
    "residual_dropout", "embedding_dropout", "flash_attention", "use_cache", "architectures",
    "auto_map", "transformers_version", "torch_dtype", "mlp_ratio", "alibi_bias_max",
    "rope_full_precision", "weight_tying_init", "new_embedding_init_range", "_name_or_path",
    "bos_token_id", "emb_init_std", "softmax_auxiliary_loss",
    "attention_type", "tie_word_embeddings",
}


@dataclass
class LLaDAConfig:
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
        if raw.get("model_type", "llada") != "llada":
            raise ConfigError(f"model_type {raw.get('model_type')!r} is not supported "
                              "(expected 'llada')")
        for name, allowed in _FIXED.items():
            if name in raw and raw[name] not in allowed:
                raise ConfigError(f"config field {name}={raw[name]!r} is not supported "
                                  f"(this implementation needs {allowed[0]!r})")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known - set(_FIXED) - _IGNORED
        if unknown:
            log.warning("config.json: ignoring unknown fields %s", sorted(unknown))
        kwargs = {k: v for k, v in raw.items() if k in known}
        if mask_token_id is not None:
            kwargs["mask_token_id"] = mask_token_id
        kwargs.setdefault("embedding_size", kwargs.get("vocab_size"))
        kwargs.setdefault("pad_token_id", kwargs.get("eos_token_id"))
        for required in ("mask_token_id", "eos_token_id"):
            if kwargs.get(required) is None:
                raise ConfigError(f"config has no {required}; pass it explicitly "
                                  f"(LLaDA-8B: --mask-token-id 126336)")
        try:
            return cls(**kwargs)
        except TypeError as e:  # a missing required field
            raise ConfigError(f"config.json: {e}") from None

    def to_dict(self) -> dict:
        return asdict(self)
