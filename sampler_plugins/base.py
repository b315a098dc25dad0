"""The sampler interface: given one denoising step's confidences, which positions to commit.

The engine owns the loop. Once per step it calls `select(view)` on each sampler group (the rows
of the batch using that sampler) with [n, W] tensors over each row's answer canvas, W the widest
canvas in the batch. A sampler returns a [n, W] bool tensor; the engine then enforces the
invariants whatever came back: only `candidate` positions (still masked, current block) are
committed, at least one per step, and everything left at a block's last allowed step.

A sampler object is built per group from its rows' validated params (so it can stack them into
tensors once), and rebuilt whenever the batch's membership changes. Per-sequence state that must
survive across steps (KLASS's previous distributions, the learned policy's rollout records)
lives in `view.states`, one dict per row, owned by the engine's sequence objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from unmaskd.kernels import STAT_FIELDS
from unmaskd.kernels.rng import M32, fmix32


class SamplerParams(BaseModel):
    """A sampler's per-request parameters; unknown fields, and strings or booleans where
    numbers belong (and the reverse), are rejected: JSON types are not coerced."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


@dataclass
class StepView:
    token: torch.Tensor  # [n, W] long: proposed token per position
    prob: torch.Tensor  # [n, W] float: probability of the proposed token
    # The statistics a sampler declares in `stats` beside prob ([n, W]; None if undeclared)
    top1: torch.Tensor | None
    top2: torch.Tensor | None
    entropy: torch.Tensor | None
    candidate: torch.Tensor  # [n, W] bool: still masked and in the current block
    masked: torch.Tensor  # [n, W] bool: still masked anywhere in the canvas
    in_block: torch.Tensor  # [n, W] bool: position belongs to the current block
    valid: torch.Tensor  # [n, W] bool: position is inside this row's canvas
    step_in_block: torch.Tensor  # [n] long: steps already spent on the current block
    steps_per_block: torch.Tensor  # [n] long: the block's step budget
    block_length: torch.Tensor  # [n] long: B (a block-diffusion model's first block may hold
    # fewer canvas positions: the prompt's tail fills the rest)
    nfe: torch.Tensor  # [n] long: denoising steps done before this one
    gen_length: torch.Tensor  # [n] long
    rng_keys: torch.Tensor  # [n] int64: per-row counter-based RNG key for this step
    probs: torch.Tensor | None = None  # [n, W, V] full distributions, only if needs_probs
    # [n, W, width] fp32: the input layer the sampler asked for in policy_input(), applied to
    # each position's statistics by the confidence kernel (zeros where the grids hold no
    # statistics); None if not asked (or not granted)
    embedding: torch.Tensor | None = None
    states: list[dict] = field(default_factory=list)  # per-row persistent sampler state

    def of_rows(self, index: torch.Tensor | slice, states: list[dict],
                **extra: torch.Tensor | None) -> StepView:
        """The view of some rows (an index tensor, or a slice for all), with their states and
        the per-group fields in `extra` (probs, embedding)."""
        picked = {f.name: value[index] if isinstance(value, torch.Tensor) else value
                  for f in fields(self) if (value := getattr(self, f.name)) is not None}
        return replace(self, **{**picked, "states": states, **extra})


class Sampler:
    name: ClassVar[str]
    Params: ClassVar[type[SamplerParams]] = SamplerParams
    needs_probs: ClassVar[bool] = False  # True: the engine passes full distributions (costly)
    full_canvas: ClassVar[bool] = False  # True: statistics for the whole canvas, not one block
    # The per-position statistics select() reads (token and prob always come): each of top2
    # and entropy costs passes over the vocabulary on a CPU, so rules declare what they use
    stats: frozenset[str] = frozenset(STAT_FIELDS)

    @classmethod
    def finalize(cls, params: SamplerParams, gen_length: int, block_length: int) -> SamplerParams:
        """Fill request-dependent defaults once the lengths are known (validation time)."""
        return params

    @classmethod
    def warnings(cls, params: SamplerParams, gen_length: int, block_length: int) -> list[str]:
        """What a client should know about how these (finalized) params decode this canvas,
        each starting with the param's name; the server returns them with the result."""
        return []

    def __init__(self, params: list[SamplerParams], device: torch.device):
        self.params = params
        self.device = device

    def select(self, view: StepView) -> torch.Tensor:
        raise NotImplementedError

    def policy_input(self) -> tuple[torch.Tensor, torch.Tensor | None, tuple[str, ...]] | None:
        """(weight [width, F], bias, feature names) of a linear layer over the per-position
        statistics that the confidence kernel should apply in the same launch (the result comes
        back as `view.embedding`); None: not wanted. The engine grants one sampler per step."""
        return None

    def param_tensor(self, name: str, dtype=torch.float32) -> torch.Tensor:
        """One parameter of every row as a [n, 1] tensor (built once per membership change)."""
        return torch.tensor([getattr(p, name) for p in self.params], dtype=dtype,
                            device=self.device)[:, None]


def linear_schedule_count(view: StepView) -> torch.Tensor:
    """LLaDA's get_num_transfer_tokens: block_length // steps tokens per step, the remainder
    going to the first steps of the block (computed from B, as block-diffusion models do for
    their partial first block too). Returns [n] counts for this step."""
    base = view.block_length // view.steps_per_block
    remainder = view.block_length % view.steps_per_block
    return base + (view.step_in_block < remainder).long()


def top_n_mask(scores: torch.Tensor, candidate: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Mark the n highest-scoring candidates of each row (ties: lowest index first)."""
    scores = scores.masked_fill(~candidate, float("-inf"))
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return (ranks < n[:, None]) & candidate


def sorted_prefix_mask(ok_sorted: torch.Tensor, order: torch.Tensor,
                       candidate: torch.Tensor) -> torch.Tensor:
    """Rules that commit the longest prefix of a ranking: `ok_sorted[:, i]` says whether rank i
    passes; keep ranks up to the first failure (at least the first), mapped back to positions."""
    ok_sorted = ok_sorted.clone()
    ok_sorted[:, 0] = True  # at least one (the engine drops it again if there is no candidate)
    take = ok_sorted.cumprod(-1).bool()
    return torch.zeros_like(candidate).scatter(-1, order, take) & candidate


def counter_uniform(keys: torch.Tensor, width: int) -> torch.Tensor:
    """Uniforms in (0, 1) of shape [n, width] from per-row int64 keys: a counter-based hash,
    so a row's draws never depend on its batch. The key's two halves xor-folded, a linear
    mix with the column, then kernels/rng.py's fmix32 with middle shift 16, not murmur3's 13
    (the hash these draws have always come from: they decide the random-order sampler's and the
    learned policy's tokens); the high 24 bits, centred in their bin."""
    cols = torch.arange(width, device=keys.device, dtype=torch.int64)
    h = (keys[:, None] ^ (keys[:, None] >> 32)) & M32
    h = (h * 0x9E3779B1 + cols * 0x85EBCA77 + 0x165667B1) & M32
    h = fmix32(h, shift=16)
    return ((h >> 8).double() + 0.5) / float(1 << 24)
