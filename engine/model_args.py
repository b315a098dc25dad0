"""How every command loads a model: one set of flags for generate, eval, train-policy and serve.

    --model DIR  --device cpu|cuda[:N]  --dtype auto|float32|bfloat16|float16
    --mask-token-id N  --cache none|prefix|dual  --policies DIR  --threads N

`ModelArgs` declares them once: the CLI's argparse flags are generated from its fields
(`add_model_args`), and `serve`'s settings inherit them (`UNMASKD_DTYPE`, `UNMASKD_CACHE`, ...),
so no command can drift from another in a flag's name, default, allowed values or help. Every
command then calls `build_engine`. A folder that cannot be loaded, or loads but cannot decode
one request, is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin

import torch
from pydantic import AfterValidator, BaseModel, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from unmaskd.dllm import EMBEDDED_MODEL_DIR, SHIPPED_MODELS, model_dir
from unmaskd.engine.kv_cache import CACHE_MODES
from unmaskd.engine.loop import Engine

DTYPES = ("auto", "float32", "bfloat16", "float16")

# Flags of the commands that serve requests: train-policy writes policies rather than reading
# them, and sets its canvas with its own --gen-length.
SERVING_ONLY = ("policies", "default_gen_length")


class ModelArgs(BaseModel):
    """The model flags, each with its type, default, allowed values and help, in one place;
    a field `mask_token_id` is the flag `--mask-token-id` and the variable
    `UNMASKD_MASK_TOKEN_ID`."""

    model: Annotated[Path, AfterValidator(model_dir)] = Field(
        EMBEDDED_MODEL_DIR, description="checkpoint folder (config.json, safetensors, "
                                        "tokenizer.json) or a shipped model's name: "
                                        + ", ".join(SHIPPED_MODELS) + " (default: embedded)")
    policies: Path | None = Field(
        None, description="folder of learned unmasking policies (default: MODEL/policies)")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, ...")
    dtype: Literal[DTYPES] = Field(
        "auto", description="weights' dtype (auto: config's torch_dtype on CUDA, float32 on CPU)")
    mask_token_id: int | None = Field(
        None, ge=0, description="override config.json's mask_token_id (LLaDA-8B: 126336) "
                                "(default: config.json's)")
    cache: Literal[CACHE_MODES] = Field(
        "none", description="key/value cache for every request: none, or Fast-dLLM's prefix or "
                            "dual cache")
    default_gen_length: int | None = Field(
        None, ge=1, description="canvas of requests that name none (default: the one the model "
                                "folder's unmaskd_task.json records, else 48)")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default)")


def add_model_args(ap: argparse.ArgumentParser, serving: bool = True) -> None:
    """The flags of ModelArgs' fields; `serving` adds those in SERVING_ONLY."""
    for name, field in ModelArgs.model_fields.items():
        if serving or name not in SERVING_ONLY:
            choices = get_args(field.annotation) if get_origin(field.annotation) is Literal \
                else None
            ap.add_argument("--" + name.replace("_", "-"), type=_flag_type(field),
                            default=field.default, choices=choices, help=field.description)


def _flag_type(field: FieldInfo) -> Callable[[str], object]:
    """A flag's argparse type: the field's plain type first (so "x" for an integer is argparse's
    own "invalid int value: 'x'"), then the field's checks (bounds, `model_dir`), so that a flag
    accepts exactly what the setting does."""
    if get_origin(field.annotation) is Literal:
        plain = str  # argparse checks the choices
    else:  # `int | None` -> int
        plain = next(t for t in get_args(field.annotation) or (field.annotation,)
                     if t is not type(None))
    checks = TypeAdapter(Annotated[(plain, *field.metadata)]) if field.metadata else None

    def parse(text: str) -> object:
        value = plain(text)
        if checks is None:
            return value
        try:
            return checks.validate_python(value)
        except ValidationError as e:
            raise argparse.ArgumentTypeError(e.errors()[0]["msg"]) from None

    parse.__name__ = plain.__name__  # the name argparse's "invalid ... value" message uses
    return parse


def resolve_dtype(dtype: str, device: str, model_dir: Path) -> torch.dtype:
    """auto: the checkpoint's `torch_dtype` on CUDA (an 8B model in bf16, not fp32), float32 on
    the CPU (where bf16 matmuls are slow and fp16 ones are missing)."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if not str(device).startswith("cuda"):
        return torch.float32
    from unmaskd.dllm.checkpoint import read_config

    name = read_config(model_dir).get("torch_dtype", "float32")
    return getattr(torch, name) if name in DTYPES else torch.float32


def load_policies(policies_dir: Path, model_dir: Path) -> list[str]:
    """Load the learned policies trained for this model (none is fine: `learned` then says so)."""
    from unmaskd.sampler_plugins.policy_store import STORE, model_fingerprint

    if not Path(policies_dir).is_dir():
        return []
    return STORE.load_dir(policies_dir, model_fingerprint(model_dir))


def build_engine(model: Path, device: str = "cpu", dtype: str = "auto",
                 mask_token_id: int | None = None, cache: str = "none",
                 policies: Path | None = None, default_gen_length: int | None = None,
                 threads: int = 0) -> Engine:
    """The engine, once it has decoded one request (`Engine.self_test`), and the policies in
    `policies` if given; raises the loader's error (CheckpointError, ConfigError, OSError) or
    DeviceError for the caller to report."""
    if threads:
        torch.set_num_threads(threads)
    check_device(device)
    engine = Engine.from_dir(model, device=device, dtype=resolve_dtype(dtype, device, model),
                             mask_token_id=mask_token_id, default_gen_length=default_gen_length,
                             cache=cache)
    engine.self_test()
    if policies is not None:
        load_policies(policies, model)
    return engine


class DeviceError(ValueError):
    """--device names a device this process cannot use."""


def check_device(device: str) -> None:
    """Refuse a device torch cannot parse or reach (cuda on a CPU build of torch, cuda:7 on a
    one-GPU machine) before the weights are read, in torch's own words."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as e:  # torch's words for "no such device"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeviceError(f"--device {device}: {reason}") from None


def engine_from_args(args: argparse.Namespace, default_gen_length: int | None = None) -> Engine:
    """The engine the model flags describe (with MODEL/policies unless --policies says
    otherwise, when the command serves); one line and exit status 2 if it cannot load."""
    from unmaskd.dllm.checkpoint import CheckpointError, ConfigError

    serving = hasattr(args, "policies")
    policies = (args.policies or args.model / "policies") if serving else None
    gen_length = default_gen_length or getattr(args, "default_gen_length", None)
    try:
        return build_engine(args.model, args.device, args.dtype, args.mask_token_id, args.cache,
                            policies, gen_length, args.threads)
    except (CheckpointError, ConfigError, DeviceError, OSError) as e:
        print(f"error: cannot load the model from {args.model}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def block_length_arg(text: str) -> int | str:
    """`--block-length N` or `full` (one block over the whole canvas: full diffusion)."""
    if text == "full":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {text!r}")
    return value


def resolve_block_length(block: int | str | None, gen_length: int) -> int | None:
    return gen_length if block == "full" else block
