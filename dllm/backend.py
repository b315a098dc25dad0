"""The model-backend seam: what the engine may ask of a dLLM, and which file serves which family.

The engine asks a backend for one thing, the logits of the current step:

    logits = model(input_ids, attention_mask)                 # full forward, [B, T, V]
    logits = model(ids_q, positions=pos_q, kv=writer)         # a slice over cached keys/values

and reads four facts from it: `config.mask_token_id`, `config.eos_token_id`,
`config.vocab_size`, `config.max_sequence_length`; `kv_layout` (layers, KV heads, head dim) to
size a cache; and `logit_offset`, how logits line up with positions (0: the row at column j
predicts column j, as LLaDA; 1: it predicts column j + 1, as Dream's shifted head). Nothing else
about the architecture reaches the decoding loop.

One file per family under `unmaskd.dllm`, found by config.json's `model_type` in `FAMILIES`.
Each exports `MODEL_TYPES`, `WEIGHT_PREFIX` (stripped from checkpoint keys), `config_from_dict(raw,
mask_token_id)` and `Model(config)`; optionally `load_tokenizer(model_dir)` (default:
AutoTokenizer over tokenizer.json, never remote code). A model whose family decodes the whole
canvas as one block by default says `default_block_length = "full"`. A family whose special ids
live in the tokenizer files (LLaDA2) takes `config_from_dict(raw, mask_token_id, model_dir)` and
reads them with `declared_token_id`.

Block-diffusion models (SDAR, LLaDA2) say `block_causal = True` and give their trained
`block_size` and their family's defaults (`sampler_defaults`, e.g. LLaDA2's threshold 0.95).
Their attention is bidirectional inside a block and causal across blocks, blocks aligned to
absolute position 0 (`block_causal_bias`).
Without `kv`, or when the writer returns no mask, a forward attends block-causally with the
model's own `block_size`; a decode with another block length passes its mask through `kv`.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import fields
from pathlib import Path
from types import ModuleType
from typing import Protocol

import torch

log = logging.getLogger(__name__)

FAMILIES = {"llada": "unmaskd.dllm.llada", "Dream": "unmaskd.dllm.dream",
            "sdar": "unmaskd.dllm.sdar", "llada2_moe": "unmaskd.dllm.llada2"}


class ConfigError(ValueError):
    """The checkpoint's config asks for something this implementation does not do."""


class KVWriter(Protocol):
    """Passed by the engine as `kv` when it caches. A backend calls it once per layer with the
    fresh keys/values of its queries ([B, H_kv, Q, head_dim], after RoPE) and attends with what
    comes back: keys, values and an additive key mask (None: attend with the forward's own)."""

    def __call__(self, layer: int, k: torch.Tensor, v: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...


def config_kwargs(cls: type, raw: dict, fixed: dict[str, tuple], ignored: set[str]) -> dict:
    """The fields of config.json (`raw`) that the config dataclass `cls` takes. A field of
    `fixed` whose value is not one the family implements is refused, naming it; fields neither
    taken, fixed nor `ignored` (training-only) are logged and dropped."""
    for name, allowed in fixed.items():
        if name in raw and raw[name] not in allowed:
            raise ConfigError(f"config field {name}={raw[name]!r} is not supported "
                              f"(this implementation needs {allowed[0]!r})")
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known - set(fixed) - ignored
    if unknown:
        log.warning("config.json: ignoring unknown fields %s", sorted(unknown))
    return {k: v for k, v in raw.items() if k in known}


def build_config(cls: type, kwargs: dict):
    try:
        return cls(**kwargs)
    except TypeError as e:  # a missing required field
        raise ConfigError(f"config.json: {e}") from None


def family(model_type: object) -> ModuleType:
    """The backend module for a config.json `model_type`; a ConfigError naming it otherwise."""
    name = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if name is None:
        raise ConfigError(f"model_type {model_type!r} is not supported "
                          f"(supported: {', '.join(sorted(FAMILIES))})")
    return importlib.import_module(name)


def block_causal_bias(q_positions: torch.Tensor, k_positions: torch.Tensor, block_size: int,
                      key_valid: torch.Tensor | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive attention mask [B, 1, Q, K] of a block-causal model: a query at position p sees
    a key at position s iff s // block_size <= p // block_size (and the key is valid)."""
    see = k_positions[:, None, :] // block_size <= q_positions[:, :, None] // block_size
    if key_valid is not None:
        see = see & key_valid[:, None, :].bool()
    bias = torch.zeros(see.shape, dtype=dtype, device=see.device)
    return bias.masked_fill(~see, float("-inf"))[:, None]


def declared_token_id(model_dir: str | Path, name: str) -> int | None:
    """The id of the special token that the tokenizer files declare as `name` ("mask_token",
    "eos_token"): tokenizer_config.json (or special_tokens_map.json) names it, tokenizer.json
    numbers it. None when the files do not say."""
    model_dir = Path(model_dir)
    declared = None
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = model_dir / file
        if declared is None and path.is_file():
            declared = json.loads(path.read_text()).get(name)
    if isinstance(declared, dict):  # {"content": "<|mask|>", "lstrip": false, ...}
        declared = declared.get("content")
    path = model_dir / "tokenizer.json"
    if not isinstance(declared, str) or not path.is_file():
        return None
    tokenizer = json.loads(path.read_text())
    for added in tokenizer.get("added_tokens", []):
        if added.get("content") == declared:
            return added["id"]
    vocab = tokenizer.get("model", {}).get("vocab")
    return vocab.get(declared) if isinstance(vocab, dict) else None
