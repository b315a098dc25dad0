"""`Unmaskd` and `UnmaskdLearned`: SGLang dLLM algorithms (sglang 0.5.23's `DllmAlgorithm`) whose
every decision is an unmaskd sampler's (block_step.py), in SGLang's own loop: its `run` forwards
the batch's current blocks and calls `step` until every block is done.

Imported only by `register()` after the version check: it imports SGLang's base class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from sglang.srt.dllm.algorithm.base import DllmAlgorithm
from sglang.srt.dllm.config import DllmConfig
from sglang.srt.model_executor.forward_batch_info import ForwardBatch
from unmaskd.engine.sglang_plugin.block_step import BlockStepper
from unmaskd.engine.sglang_plugin.config import (
    AlgorithmConfigError,
    SamplerSetup,
    parse_learned,
    parse_unmaskd,
)

# The block-causal families SGLang serves with a mask-based algorithm, and their block sizes as
# sglang 0.5.23's DllmConfig.from_server_args sets them (the YAML's block_size overrides).
BLOCK_SIZES = {"LLaDA2MoeModelLM": 32, "SDARForCausalLM": 4, "SDARMoeForCausalLM": 4}


def served_model_dir() -> str | None:
    """The model folder of the SGLang process this runs in (its published server args)."""
    from sglang.srt.runtime_context import get_server_args

    try:
        server_args = get_server_args()
    except ValueError:  # "Global server args is not set yet!": not inside a server
        return None
    return getattr(server_args, "model_path", None)


class _UnmaskdAlgorithm(DllmAlgorithm):
    supported_architectures = tuple(BLOCK_SIZES)
    name: ClassVar[str]

    @classmethod
    def parse(cls, algorithm_config: dict, block_size: int, model_dir: str | None
              ) -> SamplerSetup:
        raise NotImplementedError

    def __init__(self, config: DllmConfig):
        super().__init__(config)
        # Built in each scheduler process; configure_server_args has checked the same file in
        # the launching process, so a refusal here is one the launch already reported.
        setup = self.parse(config.algorithm_config or {}, config.block_size, served_model_dir())
        self.stepper = BlockStepper(setup, config.block_size, config.mask_id,
                                    max_tracked=max(1024, 8 * config.max_running_requests))

    @classmethod
    def configure_server_args(cls, server_args: Any) -> None:
        """At launch, before any process starts: the YAML through the samplers' schemas (and
        the policy through its checks); a refusal stops SGLang with one line naming the field."""
        model_dir = getattr(server_args, "model_path", None)
        path = getattr(server_args, "dllm_algorithm_config", None)
        try:
            raw = yaml.safe_load(Path(path).read_text()) if path else {}
        except (OSError, yaml.YAMLError) as e:
            first = str(e).splitlines()[0]
            raise SystemExit(f"error: --dllm-algorithm-config {path}: {first}") from None
        raw = raw or {}
        if not isinstance(raw, dict):
            raise SystemExit(f"error: --dllm-algorithm-config {path}: must be a YAML mapping")
        try:
            cls.parse(raw, launch_block_size(cls.name, model_dir, raw), model_dir)
        except AlgorithmConfigError as e:
            raise SystemExit(f"error: {e}") from None

    def step(self, forward_batch: ForwardBatch, full_logits: torch.Tensor,
             states: list[Any]) -> list[bool]:
        n = forward_batch.batch_size
        starts = forward_batch.positions.view(n, self.block_size)[:, 0].tolist()
        return self.stepper.step(forward_batch.input_ids, full_logits,
                                 forward_batch.dllm_prompt_mask, starts, forward_batch.rids)


def launch_block_size(algorithm: str, model_dir: str | None, raw: dict) -> int:
    """The block size SGLang will decode in: the YAML's, else its architecture's."""
    if "block_size" in raw:
        size = raw["block_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise AlgorithmConfigError(algorithm, "block_size",
                                       f"must be a positive integer, got {size!r}")
        return size
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        arch = (config.get("architectures") or [None])[0]
    except (OSError, TypeError, AttributeError, ValueError):
        arch = None
    return BLOCK_SIZES.get(arch, 32)  # SGLang itself refuses any other architecture


class Unmaskd(_UnmaskdAlgorithm):
    """Any unmaskd sampler but the learned policy: `sampler: NAME` and its parameters."""

    name = "Unmaskd"

    @classmethod
    def parse(cls, algorithm_config, block_size, model_dir):
        return parse_unmaskd(algorithm_config, block_size)


class UnmaskdLearned(_UnmaskdAlgorithm):
    """unmaskd's learned unmasking policy, checked against the served model folder."""

    name = "UnmaskdLearned"

    @classmethod
    def parse(cls, algorithm_config, block_size, model_dir):
        return parse_learned(algorithm_config, block_size, model_dir)


ALGORITHMS = (Unmaskd, UnmaskdLearned)
__all__ = ["ALGORITHMS", "Unmaskd", "UnmaskdLearned"]
