"""What every family file shares below its model: config.json's validation, the key/value
cache seam, and the block-causal mask.

The contract between the engine and a family (what the engine reads off a model and its config)
is `unmaskd.dllm.family`; which family serves which `model_type` is `unmaskd.dllm.registry`.

Config: `config_kwargs` and `build_config` turn config.json into a family's config dataclass,
refusing, by field name, a value the family does not implement or that no model can run with.
A family whose special ids live in the tokenizer files (SDAR, LLaDA2) reads them with
`declared_token_id` (through `special_token_ids`).

Cache: when it caches, the engine passes a `KVWriter` as `kv`; a backend calls it once per
layer and attends with what it returns.

Block-diffusion models (SDAR, LLaDA2) attend bidirectionally inside a block and causally across
blocks, blocks aligned to absolute position 0 (`block_causal_bias`). Without `kv`, or when the
writer returns no mask, a forward attends block-causally with the model's own `block_size`; a
decode with another block length passes its mask through `kv`.
"""

from __future__ import annotations

import json
import logging
import math
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Protocol

import torch

log = logging.getLogger(__name__)

# Hugging Face's bookkeeping fields, in every family's config.json: no effect on the forward.
BOOKKEEPING = frozenset({"architectures", "auto_map", "transformers_version", "torch_dtype",
                         "use_cache", "_name_or_path", "bos_token_id", "attention_dropout"})


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
    taken, fixed, `ignored` (training-only) nor BOOKKEEPING are logged and dropped."""
    for name, allowed in fixed.items():
        if name in raw and raw[name] not in allowed:
            raise ConfigError(f"config field {name}={raw[name]!r} is not supported "
                              f"(this implementation needs {allowed[0]!r})")
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known - set(fixed) - ignored - BOOKKEEPING
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


def special_token_ids(kwargs: dict, mask_token_id: int | None, model_dir: str | Path | None,
                      missing: str) -> None:
    """Sets `kwargs`' mask_token_id (the flag's, `mask_token_id`, over the config's) and checks
    both special ids are there. Where the config has one not, a family that passes its folder
    (ids in the tokenizer files) takes the token the tokenizer declares; else a ConfigError,
    `missing` formatted with the `field` and the `token`."""
    if mask_token_id is not None:
        kwargs["mask_token_id"] = mask_token_id
    for field, token in (("mask_token_id", "mask_token"), ("eos_token_id", "eos_token")):
        if kwargs.get(field) is None and model_dir is not None:
            kwargs[field] = declared_token_id(model_dir, token)
        if kwargs.get(field) is None:
            raise ConfigError(missing.format(field=field, token=token))


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
