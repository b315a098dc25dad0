"""Load and save dLLM checkpoint folders, for every family in `dllm.registry.FAMILIES`.

    model, tokenizer = load_dllm("path/to/LLaDA-8B-Instruct", dtype=torch.bfloat16, device="cuda")

A folder holds `config.json` (its `model_type` picks the family), `model.safetensors` (or
shards + `model.safetensors.index.json`) and `tokenizer.json`; one that `unmaskd train-dllm`
trained on a task other than arithmetic also `unmaskd_task.json` (the task and its canvas).
Weights are memory-mapped from safetensors and refused if any is not finite; nothing in the
folder is executed (no `trust_remote_code`), and pickle files are never read.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from unmaskd.dllm import llada
from unmaskd.dllm.backend import ConfigError
from unmaskd.dllm.registry import family


class CheckpointError(ValueError):
    """A checkpoint folder is missing a file, or a file is unreadable or inconsistent."""


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (expected a dLLM checkpoint folder)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return raw


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: unreadable index ({e})") from None
        return [model_dir / s for s in shards]
    return [model_dir / "model.safetensors"]


def load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(model_dir):
        if not path.is_file():
            raise CheckpointError(f"{path}: weight file not found")
        try:
            with safe_open(str(path), framework="pt") as f:  # memory-mapped
                for key in f.keys():
                    state[key] = f.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({e})") from None
    return state


def load_dllm(model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu",
              mask_token_id: int | None = None):
    """Returns (model in eval mode, tokenizer)."""
    model_dir = Path(model_dir)
    raw = read_config(model_dir)
    fam = family(raw.get("model_type", "llada"))
    # A family whose special ids live in the tokenizer files (LLaDA2) reads them from the folder.
    takes_dir = "model_dir" in inspect.signature(fam.config.from_dict).parameters
    try:
        cfg = fam.config.from_dict(raw, mask_token_id=mask_token_id,
                                   **({"model_dir": model_dir} if takes_dir else {}))
    except ConfigError as e:
        if e.field == "mask_token_id" and mask_token_id is not None:  # the flag's value
            raise ConfigError(f"--mask-token-id {mask_token_id} {e.problem}",
                              field="mask_token_id") from None
        raise
    # A family may load its tokenizer itself (Dream: without its remote-code class); before
    # the weights, so a folder without one fails fast.
    tokenizer = (fam.load_tokenizer or _auto_tokenizer)(model_dir)
    if len(tokenizer) > cfg.vocab_size:  # its ids past the model's would fail every request
        raise ConfigError(f"config field vocab_size={cfg.vocab_size} is smaller than the "
                          f"tokenizer's {len(tokenizer)} tokens", field="vocab_size")
    with torch.device("meta"):
        model = fam.model(cfg)
    prefix = fam.weight_prefix
    state = {k.removeprefix(prefix): v for k, v in load_state_dict(model_dir).items()}
    for key in model.tied_keys:  # a tied head's copy some checkpoints carry
        state.pop(key, None)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{model_dir}: weights do not match config.json "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(f"{model_dir}: {prefix}{key} has shape {tuple(tensor.shape)}, "
                                  f"config.json implies {tuple(expected[key].shape)}")
        # A corrupt file of the right size (bytes overwritten) loads silently and answers
        # empty text for every request; non-finite weights are never a real checkpoint.
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{model_dir}: weight {prefix}{key} has non-finite values "
                                  "(NaN or inf): the checkpoint is corrupt")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)
    model = model.to(device).eval().requires_grad_(False)
    return model, tokenizer


def _auto_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    if not (model_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{model_dir / 'tokenizer.json'}: not found (a checkpoint folder "
                              "needs its tokenizer.json)")
    # AutoTokenizer peeks at config.json and warns that "llada" is not a transformers model
    # type; harmless here, since only the tokenizer files are used.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True,
                                             trust_remote_code=False)
    except Exception as e:  # a malformed file raises whatever its parser meets first
        raise tokenizer_error(model_dir, e) from None
    finally:
        transformers_logging.set_verbosity(verbosity)


def tokenizer_error(model_dir: Path, e: Exception) -> CheckpointError:
    return CheckpointError(f"{model_dir}: tokenizer files unreadable ({type(e).__name__}: {e})")


def stop_token_ids(model_dir: str | Path) -> list[int]:
    """The end-of-answer ids a checkpoint's generation_config.json names (an int or a list;
    none if it has no such file): chat models end a turn with a token other than EOS."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return []
    try:
        ids = json.loads(path.read_text()).get("eos_token_id", [])
    except (json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    ids = [ids] if isinstance(ids, int) else ids
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise CheckpointError(f"{path}: eos_token_id must be an id or a list of ids")
    return ids


TASK_FILE = "unmaskd_task.json"  # beside config.json, which stays a plain LLaDA config


def write_task_file(model_dir: Path, task: str, gen_length: int, block_length: int) -> None:
    """Record the task suite a model was trained on and its canvas, for `unmaskd eval`."""
    info = {"task": task, "gen_length": gen_length, "block_length": block_length}
    (Path(model_dir) / TASK_FILE).write_text(json.dumps(info, indent=2) + "\n")


def read_task_file(model_dir: str | Path) -> dict:
    """The folder's task record ({} if it has none: a model of no task, or an arithmetic one
    exported before the file existed); refused, naming the file, if it is malformed. Plain
    data: the task is a name, checked against the task suites where a suite is looked up
    (`unmaskd.tasks.get_task`), not here."""
    path = Path(model_dir) / TASK_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not (isinstance(info, dict) and isinstance(info.get("task"), str)
            and all(isinstance(info.get(k), int) for k in ("gen_length", "block_length"))):
        raise CheckpointError(f"{path}: expected task (a task name), gen_length and "
                              "block_length (integers)")
    return info


def save_dllm(model: llada.LLaDAModel, model_dir: str | Path) -> None:
    """Write config.json and model.safetensors (tokenizer files are copied by the caller)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    config = {**model.config.to_dict(), "architectures": ["LLaDAModelLM"]}
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {llada.ENTRY.weight_prefix + k: v.detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


__all__ = ["CheckpointError", "ConfigError", "load_dllm", "read_config", "read_task_file",
           "save_dllm", "write_task_file"]
