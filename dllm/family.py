"""The contract between the engine and a model family, as types checked when a family registers.

A family file ends with its entry, `ENTRY = Family(model_type, ConfigClass, ModelClass, ...)`.
Building the entry checks the two classes against the contract below, so a family that
misspells or leaves out a capability fails when its file is imported, naming the attribute,
instead of decoding the wrong way: the engine reads `block_causal` off the model, and a model
that said `block_casual = True` would be decoded as bidirectional, without an error.

The contract is what the engine (engine/loop.py, engine/kv_cache.py) and the loader
(dllm/checkpoint.py) read, and nothing else:
- off the config: `mask_token_id`, `eos_token_id`, `vocab_size`, `max_sequence_length`;
  `from_dict(raw, mask_token_id[, model_dir])` builds it from config.json (with `model_dir`,
  for a family whose special ids live in the tokenizer files);
- off the model: `forward`, `config`, `kv_layout`, `logit_offset` and the capabilities with
  their defaults in `DiffusionLM`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from unmaskd.dllm.backend import KVWriter


class ContractError(TypeError):
    """A family's classes do not keep the contract (raised when its entry is built)."""


class ModelConfig:
    """Base of a family's config dataclass. The engine reads `CONFIG_READS` off it (a dataclass
    field or a property); the loader builds it with the subclass's `from_dict`."""

    CONFIG_READS: ClassVar[tuple[str, ...]] = (
        "mask_token_id", "eos_token_id", "vocab_size", "max_sequence_length")

    @classmethod
    def from_dict(cls, raw: dict, mask_token_id: int | None = None) -> ModelConfig:
        """The config from config.json's fields (`raw`), refusing by name what the family does
        not implement; `mask_token_id` (the flag) overrides the config's. A family whose special
        ids live in the tokenizer files also takes `model_dir`, and reads them there."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """config.json's fields (what `unmaskd train-dllm` saves)."""
        return asdict(self)


class DiffusionLM(nn.Module):
    """Base of a family's model: the attributes below are every one the engine and the loader
    read off a model. A subclass sets `logit_offset` and `kv_layout`; the rest have defaults.

        logits = model(input_ids, attention_mask)              # full forward, [B, T, V]
        logits = model(ids_q, positions=pos_q, kv=writer)      # a slice over cached keys/values
    """

    config: Any  # the family's ModelConfig subclass
    # How logits line up with positions. 0: the row at column j predicts column j (LLaDA);
    # 1: it predicts column j + 1 (Dream's shifted head).
    logit_offset: ClassVar[int]
    # Attention bidirectional inside a block of `block_size` and causal across blocks (SDAR,
    # LLaDA2): the engine aligns decoding blocks to position 0 and caches finished blocks.
    block_causal: ClassVar[bool] = False
    # "full": a request naming no block length decodes its whole canvas as one block (Dream).
    default_block_length: ClassVar[str | None] = None
    # Per-sampler parameter defaults the model's own release uses (LLaDA2: threshold 0.95).
    sampler_defaults: ClassVar[dict[str, dict]] = {}

    @property
    def block_size(self) -> int:
        """A block-causal model's trained block (its config's `block_size`)."""
        return self.config.block_size

    @property
    def tied_keys(self) -> tuple[str, ...]:
        """Checkpoint keys the loader drops: a tied head's copy that some checkpoints carry."""
        return ()

    @property
    def kv_layout(self) -> tuple[int, int, int]:
        """(layers, KV heads, head dim): what the engine sizes a key/value cache by."""
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, kv: KVWriter | None = None
                ) -> torch.Tensor:
        """Logits [B, T, V]. Without `kv`, or when the writer returns no mask, attention uses
        the forward's own mask (block-causal with the model's `block_size` where it is)."""
        raise NotImplementedError


# Every name the engine or the loader may read off a model, beyond nn.Module's.
MODEL_READS = frozenset(name for name in (*vars(DiffusionLM), *DiffusionLM.__annotations__)
                        if not name.startswith("_"))


@dataclass(frozen=True)
class Family:
    """One family's entry: which config.json `model_type` it serves, with which classes."""

    model_type: str
    config: type[ModelConfig]
    model: type[DiffusionLM]
    weight_prefix: str = ""  # stripped from checkpoint keys to reach the module tree's names
    # None: transformers' AutoTokenizer over tokenizer.json, never the folder's remote code
    load_tokenizer: Callable[[Path], Any] | None = None

    def __post_init__(self) -> None:
        _check_model(self.model)
        _check_config(self.config, self.model)


def _check_config(config: type, model: type[DiffusionLM]) -> None:
    """The config class gives what the engine reads off `model`'s config, and its from_dict."""
    if not (dataclasses.is_dataclass(config) and issubclass(config, ModelConfig)):
        raise ContractError(f"{config.__qualname__} must be a dataclass deriving from "
                            "unmaskd.dllm.family.ModelConfig")
    if config.from_dict.__func__ is ModelConfig.from_dict.__func__:
        raise ContractError(f"{config.__qualname__} must define from_dict")
    names = {f.name for f in dataclasses.fields(config)} | set(dir(config))
    needed = list(ModelConfig.CONFIG_READS)
    if model.block_causal:
        needed.append("block_size")
    for name in needed:
        if name not in names:
            raise ContractError(f"{config.__qualname__} has no {name!r}, which the engine "
                                f"reads off {model.__qualname__}'s config")


def _check_model(model: type) -> None:
    """Every public non-method attribute the class (and its bases below DiffusionLM) defines
    must be one the engine reads: a misspelt capability is refused, not ignored."""
    if not (isinstance(model, type) and issubclass(model, DiffusionLM)):
        raise ContractError(f"{model!r} must derive from unmaskd.dllm.family.DiffusionLM")
    for cls in model.__mro__[:model.__mro__.index(DiffusionLM)]:
        for name, value in vars(cls).items():
            if name.startswith("_") or name in MODEL_READS or callable(value) or isinstance(
                    value, (classmethod, staticmethod)):
                continue
            close = difflib.get_close_matches(name, MODEL_READS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ContractError(f"{cls.__qualname__}.{name} is not part of the family contract "
                                f"(unmaskd.dllm.family.DiffusionLM){hint}")
    if getattr(model, "logit_offset", None) not in (0, 1):
        raise ContractError(f"{model.__qualname__}.logit_offset must be 0 or 1")
    for name in ("kv_layout", "forward"):
        if getattr(model, name) is getattr(DiffusionLM, name):
            raise ContractError(f"{model.__qualname__} must define {name}")
    if not isinstance(model.block_causal, bool):
        raise ContractError(f"{model.__qualname__}.block_causal must be True or False")
    if model.default_block_length not in (None, "full"):
        raise ContractError(f"{model.__qualname__}.default_block_length must be None or 'full'")
    defaults = model.sampler_defaults
    if not (isinstance(defaults, dict) and all(isinstance(v, dict) for v in defaults.values())):
        raise ContractError(f"{model.__qualname__}.sampler_defaults must map a sampler's name "
                            "to its parameters")
