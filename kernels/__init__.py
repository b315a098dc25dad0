"""Confidence statistics for masked-diffusion decoding: one fused pass over the logits.

    stats = confidence_stats(logits, temperature=0.0, seeds=None, exclude_token_id=None,
                             policy_input=None)

See reference.py for the exact definition of every output and of the Gumbel noise.
policy_input=(weight [width, F], bias [width] or None, features) also returns, as
stats.embedding (fp32 [N, width]; None without policy_input), the learned policy's input layer
applied to the row's features (confidence / margin / entropy), computed by the same launch from
its own statistics: PolicyNet.forward_embedded reads it directly.
Backend: the Triton kernel for CUDA tensors, the PyTorch reference otherwise. The env var
UNMASKD_KERNEL=triton|torch (read at every call) forces one. Triton on CPU tensors runs in
Triton's interpreter, which needs TRITON_INTERPRET=1 in the environment before
kernels.triton_confidence is first imported (it is imported lazily, at the first Triton call).
"""
from __future__ import annotations

import os
from collections.abc import Collection

import torch

from .reference import (
    FEATURE_STATS,
    POLICY_FEATURES,
    STAT_FIELDS,
    ConfidenceStats,
    PolicyInput,
    check_policy_input,
    confidence_stats_torch,
    empty_stats,
    policy_features,
)

__all__ = ["FEATURE_STATS", "POLICY_FEATURES", "STAT_FIELDS", "ConfidenceStats", "PolicyInput",
           "confidence_stats", "policy_features"]


def _triton_impl(forced: bool):
    """The Triton entry point, or None if triton is missing and the Triton path is not forced."""
    try:
        from .triton_confidence import confidence_stats_triton
    except ImportError as err:
        if forced:
            msg = f"UNMASKD_KERNEL=triton but triton is not importable: {err}"
            raise RuntimeError(msg) from err
        return None
    return confidence_stats_triton


def confidence_stats(logits: torch.Tensor, temperature: float | torch.Tensor = 0.0,
                     seeds: torch.Tensor | None = None,
                     exclude_token_id: int | None = None,
                     policy_input: PolicyInput | None = None,
                     fields: Collection[str] = STAT_FIELDS) -> ConfidenceStats:
    """logits [N, V] (fp32/bf16/fp16); temperature: float or float tensor [N], T <= 0 is greedy;
    seeds: int64 [N] per-row RNG keys, required if any T > 0; policy_input: (weight [width, F],
    bias [width] or None, feature names) of the policy's input Linear; fields: the statistics
    the caller reads (the PyTorch path skips top2 and entropy when not asked for and leaves
    them NaN; the fused kernel computes all in its one pass). Returns ConfidenceStats of [N]
    (embedding: fp32 [N, width] if policy_input is given, else None)."""
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float [N, V] tensor, got {logits.dtype} {logits.shape}")
    n, vocab = logits.shape
    if vocab == 0:
        raise ValueError("logits must have at least one column")
    if exclude_token_id is not None and not 0 <= exclude_token_id < vocab:
        raise ValueError(f"exclude_token_id {exclude_token_id} is outside [0, {vocab})")
    if seeds is not None and (seeds.shape != (n,) or seeds.is_floating_point()):
        raise ValueError(f"seeds must be an integer tensor of shape [{n}], got {seeds.shape}")
    # Validated (and moved to logits.device as fp32) once here; the impls accept the result.
    # Passed by keyword, and only when given, so the impls' older call form stays valid.
    extra = {} if policy_input is None else {
        "policy_input": check_policy_input(policy_input, logits.device)}

    # Normalise temperature to a float tensor [N], or None when every row is greedy.
    if isinstance(temperature, torch.Tensor):
        if temperature.dim() != 0 and temperature.shape != (n,):
            raise ValueError(f"temperature must be a float or a [{n}] tensor")
        temps = temperature.to(device=logits.device, dtype=torch.float32).expand(n)
        # Syncs with the device, but only when seeds are missing (to decide whether to raise).
        if seeds is None and bool((temps > 0).any()):
            raise ValueError("seeds are required when any temperature > 0")
        temps = temps.contiguous() if seeds is not None else None
    elif temperature > 0:
        if seeds is None:
            raise ValueError("seeds are required when temperature > 0")
        temps = torch.full((n,), float(temperature), device=logits.device)
    else:
        temps = None
    if temps is not None:
        seeds = seeds.to(device=logits.device, dtype=torch.int64)
    if n == 0:
        return empty_stats(0, logits.device, extra["policy_input"][0].shape[0] if extra else None)

    backend = os.environ.get("UNMASKD_KERNEL", "").lower()
    if backend not in ("", "triton", "torch"):
        raise ValueError(f"UNMASKD_KERNEL must be 'triton' or 'torch', got {backend!r}")
    if backend == "triton" or (backend == "" and logits.is_cuda):
        impl = _triton_impl(forced=backend == "triton")
        if impl is not None:
            if not logits.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
                raise RuntimeError("Triton on CPU tensors needs TRITON_INTERPRET=1, set before "
                                   "unmaskd.kernels.triton_confidence is imported")
            return impl(logits, temps, seeds, exclude_token_id, **extra)
    return confidence_stats_torch(logits, temps, seeds, exclude_token_id, fields=fields,
                                  **extra)
