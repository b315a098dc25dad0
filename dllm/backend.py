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
Each exports `WEIGHT_PREFIX` (stripped from checkpoint keys), `config_from_dict(raw,
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

import json
import logging
import math
import types
import typing
from dataclasses import fields
from pathlib import Path
from types import ModuleType
from typing import Protocol

import torch

log = logging.getLogger(__name__)

# config.json's model_type -> its family file in unmaskd.dllm (family() imports them)
FAMILIES = {"llada": "llada", "Dream": "dream", "sdar": "sdar", "llada2_moe": "llada2"}


class ConfigError(ValueError):
    """The checkpoint's config asks for something this implementation does not do, or holds a
    value no model can run with; `field` names the config field when there is one."""

    def __init__(self, message: str, field: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.field = field
        self.problem = problem or message  # what is wrong with the value, without the name


def field_error(name: str, value: object, problem: str) -> ConfigError:
    return ConfigError(f"config field {name}={value!r} {problem}", name, problem)


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
    """The config dataclass from config.json's fields, refused at load, naming the field, if a
    value would only fail once a request runs: a type other than the field's (a string for a
    number), a size below 1 (below 0 for those in the class's `ZERO_OK`), a float that is not
    finite and positive, or a special token id outside [0, vocab_size)."""
    hints = typing.get_type_hints(cls)
    for name, value in kwargs.items():
        _check_type(name, value, hints[name])
    try:
        cfg = cls(**kwargs)
    except TypeError as e:  # a missing required field
        raise ConfigError(f"config.json: {e}") from None
    zero_ok = getattr(cls, "ZERO_OK", frozenset())
    for f in fields(cfg):
        value, allowed = getattr(cfg, f.name), _types(hints[f.name])
        if value is None or isinstance(value, (bool, str)):
            continue
        if f.name.endswith("_token_id"):
            if not 0 <= value < cfg.vocab_size:
                raise field_error(f.name, value, f"is not a token id: vocab_size is "
                                                 f"{cfg.vocab_size}")
        elif float in allowed:
            if not (math.isfinite(value) and value > 0):
                raise field_error(f.name, value, "must be a finite number > 0")
        elif value < (0 if f.name in zero_ok else 1):
            raise field_error(f.name, value, f"must be >= {0 if f.name in zero_ok else 1}")
    return cfg


def _types(hint: object) -> tuple:
    """The types a config field's annotation allows (int | None -> (int, NoneType))."""
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _check_type(name: str, value: object, hint: object) -> None:
    """`value` as config.json gives it against the dataclass field's type (int, float, bool,
    str, or a union of them with None). JSON's integers count as floats; booleans as neither."""
    allowed = _types(hint)
    if value is None and type(None) in allowed:
        return
    if isinstance(value, bool):
        ok = bool in allowed
    elif isinstance(value, int):
        ok = int in allowed or float in allowed
    else:
        ok = any(t in (float, str) and isinstance(value, t) for t in allowed)
    if not ok:
        words = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                 type(None): "null"}
        raise field_error(name, value, "must be " + " or ".join(words[t] for t in allowed))


def family(model_type: object) -> ModuleType:
    """The backend module for a config.json `model_type`; a ConfigError naming it otherwise."""
    name = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if name is None:
        raise ConfigError(f"model_type {model_type!r} is not supported "
                          f"(supported: {', '.join(sorted(FAMILIES))})")
    # Imported here, not at the top (every family file imports this one), and by import
    # statements, not by name, so that tests/test_layers.py sees what the library imports.
    from unmaskd.dllm import dream, llada, llada2, sdar

    files = {"llada": llada, "dream": dream, "sdar": sdar, "llada2": llada2}
    return files[name]


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
            declared = _json_object(path).get(name)
    if isinstance(declared, dict):  # {"content": "<|mask|>", "lstrip": false, ...}
        declared = declared.get("content")
    path = model_dir / "tokenizer.json"
    if not isinstance(declared, str) or not path.is_file():
        return None
    tokenizer = _json_object(path)
    added = tokenizer.get("added_tokens", [])
    for token in added if isinstance(added, list) else []:
        if isinstance(token, dict) and token.get("content") == declared:
            return token.get("id")
    model = tokenizer.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    return vocab.get(declared) if isinstance(vocab, dict) else None


def _json_object(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return raw
