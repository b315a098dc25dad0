"""`--dllm-algorithm-config FILE.yaml` for unmaskd's SGLang algorithms, validated by the
samplers' own schemas (the ones the engine validates a request's `sampler_params` with).

    Unmaskd:        {sampler: threshold, threshold: 0.9, steps_per_block: 32}
    UnmaskdLearned: {policy: FOLDER_OR_NAME, beta: 1.0, policy_temperature: 0.25,
                     allow_other_model: false, mode: bernoulli-argmax, gen_length: 256}

Keys of every algorithm: `steps_per_block` (the block's step budget, default the block size: one
position per step at the least, as the engine's default `steps`), `seed` (the counter-based RNG's
request seed, default 0 as the engine's). SGLang reads `block_size` and
`capture_input_preparation` from the same file itself; they are allowed and left to it.

UnmaskdLearned's `gen_length` is the canvas the policy measures its time t = NFE / canvas and its
positions against (default: the canvas it was trained on). A policy is refused when it cannot
run in SGLang's block loop: trained for full diffusion (one block over the canvas), or for
another dLLM than the served folder unless `allow_other_model: true` (as a request of the
engine's must say).

No SGLang import here: the refusals are tested without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unmaskd.engine.sequence import InvalidRequest, parse_sampler_params
from unmaskd.sampler_plugins import Sampler, SamplerParams
from unmaskd.sampler_plugins.learned import Learned
from unmaskd.sampler_plugins.policy_store import (
    STORE,
    OtherModelError,
    PolicyError,
    load_policy,
    model_fingerprint,
)

SGLANG_KEYS = frozenset({"block_size", "capture_input_preparation"})  # SGLang's own
LEARNED_KEYS = ("policy", "beta", "policy_temperature", "mode", "allow_other_model",
                "gen_length", "steps_per_block", "seed")


class AlgorithmConfigError(ValueError):
    """A YAML field unmaskd's algorithms refuse: `str()` is one line naming it."""

    def __init__(self, algorithm: str, field: str, message: str):
        super().__init__(f"--dllm-algorithm {algorithm}: --dllm-algorithm-config field "
                         f"{field!r}: {message}")
        self.field = field


@dataclass(frozen=True)
class SamplerSetup:
    """What one algorithm instance decodes with: a sampler class and its validated params (the
    same for every request of the server), the block's step budget and the RNG seed; for the
    learned policy, the canvas its view spans (None: the blocks decoded so far)."""

    sampler_cls: type[Sampler]
    params: SamplerParams
    steps_per_block: int
    seed: int = 0
    gen_length: int | None = None


def _int_field(algorithm: str, raw: dict, name: str, default: int, low: int,
               high: int | None = None) -> int:
    value = raw.pop(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AlgorithmConfigError(algorithm, name, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise AlgorithmConfigError(algorithm, name, f"must be {bound}, got {value}")
    return value


def _sampler_params(algorithm: str, sampler: str, raw: dict) -> tuple[type[Sampler],
                                                                     SamplerParams]:
    """The engine's parser: a request's `sampler_params` fields are this file's top-level keys,
    so its field names lose their `sampler_params.` prefix."""
    try:
        return parse_sampler_params(sampler, raw)
    except InvalidRequest as e:
        field = e.field.removeprefix("sampler_params.")
        raise AlgorithmConfigError(algorithm, field,
                                   e.message.replace("sampler_params.", "")) from None


def parse_unmaskd(raw_config: dict, block_size: int) -> SamplerSetup:
    """`--dllm-algorithm Unmaskd`: any registered sampler but the learned policy."""
    algorithm = "Unmaskd"
    raw = {k: v for k, v in raw_config.items() if k not in SGLANG_KEYS}
    if "sampler" not in raw:
        raise AlgorithmConfigError(algorithm, "sampler", "is required (e.g. sampler: threshold)")
    sampler = raw.pop("sampler")
    if not isinstance(sampler, str):
        raise AlgorithmConfigError(algorithm, "sampler", f"must be a name, got {sampler!r}")
    if sampler == Learned.name:
        raise AlgorithmConfigError(algorithm, "sampler", "the learned policy runs as "
                                   "--dllm-algorithm UnmaskdLearned")
    steps = _int_field(algorithm, raw, "steps_per_block", block_size, 1, block_size)
    seed = _int_field(algorithm, raw, "seed", 0, 0)
    cls, params = _sampler_params(algorithm, sampler, raw)
    return SamplerSetup(cls, cls.finalize(params, block_size, block_size), steps, seed)


def parse_learned(raw_config: dict, block_size: int, model_dir: str | None) -> SamplerSetup:
    """`--dllm-algorithm UnmaskdLearned`: loads the policy into the process's store, checked
    against the served model folder (`model_dir`; its `policies/` folder holds the policies
    that `policy: NAME` and the default may pick)."""
    algorithm = "UnmaskdLearned"
    raw = {k: v for k, v in raw_config.items() if k not in SGLANG_KEYS}
    unknown = sorted(set(raw) - set(LEARNED_KEYS))
    if unknown:
        raise AlgorithmConfigError(algorithm, unknown[0],
                                   f"unknown field; allowed: {', '.join(LEARNED_KEYS)}")
    steps = _int_field(algorithm, raw, "steps_per_block", block_size, 1, block_size)
    seed = _int_field(algorithm, raw, "seed", 0, 0)
    gen_length = (_int_field(algorithm, raw, "gen_length", 0, 1) if "gen_length" in raw
                  else None)
    if model_dir is None or not (Path(model_dir) / "config.json").is_file():
        raise AlgorithmConfigError(algorithm, "policy", "a policy is checked against the "
                                   f"served model's folder, and {model_dir!r} is not a local "
                                   "folder with a config.json")
    fingerprint = model_fingerprint(model_dir)
    if (Path(model_dir) / "policies").is_dir():
        STORE.load_dir(Path(model_dir) / "policies", fingerprint)
    policy = raw.get("policy")
    if isinstance(policy, str) and Path(policy).is_dir():
        raw["policy"] = _load_folder(algorithm, Path(policy), fingerprint)
    cls, params = _sampler_params(algorithm, Learned.name, raw)
    params = cls.finalize(params, block_size, block_size)
    meta = STORE.get(params.policy).meta
    trained_canvas, trained_block = int(meta["gen_length"]), int(meta["block_length"])
    if trained_block >= trained_canvas:
        raise AlgorithmConfigError(algorithm, "policy", f"policy {params.policy!r} was trained "
                                   f"for full diffusion (one block of {trained_canvas}); SGLang "
                                   "decodes block by block: use one trained with "
                                   f"`unmaskd train-policy --block-length {block_size}`")
    return SamplerSetup(cls, params, steps, seed, gen_length or trained_canvas)


def _load_folder(algorithm: str, folder: Path, fingerprint: str) -> str:
    """A policy folder named in the YAML, into the store under its folder's name (as the
    engine's --policies does); one for another dLLM is kept aside for allow_other_model."""
    name = folder.name
    try:
        try:
            STORE.add(load_policy(folder, fingerprint))
        except OtherModelError as e:  # every other check still applies
            other = load_policy(folder, None)
            STORE.remove(name)
            STORE.other_model[name], STORE.skipped[name] = other, str(e)
    except PolicyError as e:
        raise AlgorithmConfigError(algorithm, "policy", f"{folder}: {e}") from None
    return name
