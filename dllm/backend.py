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
mask_token_id)` and `Model(config)`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol

import torch

FAMILIES = {"llada": "unmaskd.dllm.llada"}


class ConfigError(ValueError):
    """The checkpoint's config asks for something this implementation does not do."""


class KVWriter(Protocol):
    """Passed by the engine as `kv` when it caches. A backend calls it once per layer with the
    fresh keys/values of its queries ([B, H_kv, Q, head_dim], after RoPE) and attends with what
    comes back: keys, values and an additive key mask (None: attend with the forward's own)."""

    def __call__(self, layer: int, k: torch.Tensor, v: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...


def family(model_type: object) -> ModuleType:
    """The backend module for a config.json `model_type`; a ConfigError naming it otherwise."""
    name = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if name is None:
        raise ConfigError(f"model_type {model_type!r} is not supported "
                          f"(supported: {', '.join(sorted(FAMILIES))})")
    return importlib.import_module(name)
