"""The family contract (dllm/family.py) is checked when a family's entry is built: a misspelt
or missing capability fails at import, naming it, instead of decoding the wrong way."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from unmaskd.dllm.backend import ConfigError
from unmaskd.dllm.family import ContractError, Family, ModelConfig
from unmaskd.dllm.layers import BlockCausalLM
from unmaskd.dllm.llada import LLaDAConfig, LLaDAModel
from unmaskd.dllm.registry import FAMILIES, family
from unmaskd.dllm.sdar import SDARConfig, SDARModel


@dataclass
class PlainConfig(ModelConfig):
    """A config with what the engine reads, and no block_size."""

    mask_token_id: int
    eos_token_id: int
    vocab_size: int
    max_sequence_length: int

    @classmethod
    def from_dict(cls, raw: dict, mask_token_id: int | None = None) -> PlainConfig:
        return cls(**raw)


def test_a_misspelt_capability_fails_when_the_family_registers():
    class Misspelt(SDARModel):
        block_casual = True  # the engine reads block_causal

    with pytest.raises(ContractError, match="Misspelt.block_casual .*did you mean 'block_causal'"):
        Family("misspelt", SDARConfig, Misspelt)


def test_a_missing_capability_fails_when_the_family_registers():
    class NoOffset(LLaDAModel):
        logit_offset = None

    with pytest.raises(ContractError, match="logit_offset must be 0 or 1"):
        Family("no-offset", LLaDAConfig, NoOffset)


def test_a_block_causal_model_needs_its_configs_block_size():
    with pytest.raises(ContractError, match="PlainConfig has no 'block_size'"):
        Family("blockless", PlainConfig, BlockCausalLM)


def test_a_config_needs_what_the_engine_reads():
    @dataclass
    class NoVocab(ModelConfig):
        mask_token_id: int
        eos_token_id: int
        max_sequence_length: int

        @classmethod
        def from_dict(cls, raw: dict, mask_token_id: int | None = None) -> NoVocab:
            return cls(**raw)

    with pytest.raises(ContractError, match="NoVocab has no 'vocab_size'"):
        Family("no-vocab", NoVocab, LLaDAModel)


def test_one_table_of_families():
    assert sorted(FAMILIES) == ["Dream", "llada", "llada2_moe", "sdar"]
    assert all(family(name).model_type == name for name in FAMILIES)
    with pytest.raises(ConfigError, match=r"supported: Dream, llada, llada2_moe, sdar"):
        family("gpt2")
