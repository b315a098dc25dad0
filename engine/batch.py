"""The running batch: the active requests laid out as tensors for one denoising step.

    batch = Batch.build(sequences, device=..., mask_id=..., eos_id=..., kv=...)
    ...                                 # Engine.step() reads and advances it in place
    batch.write_back(sequences)         # before membership changes

Layout: rows are left-padded so every prompt ends at column P; canvases start at P and are
right-padded to the widest canvas W. Tensors named `*_host` live on the CPU: the step's block
bookkeeping reads them without asking the device, and the step's one status read updates them.
A `Sequence` is one request's state between batches: its canvas, trace, counters, latest
statistics and cache rows are copied out by `write_back` and placed back by `build`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from unmaskd.engine.kv_cache import KVCache
from unmaskd.engine.sequence import ValidatedRequest
from unmaskd.sampler_plugins import Sampler


@dataclass
class Sequence:
    """One request's state. Its canvas lives in the batch tensors while it is active."""

    id: int
    vr: ValidatedRequest
    canvas: torch.Tensor  # [gen_length] long, current tokens (mask where undecided)
    trace: torch.Tensor  # [gen_length] long, commit step per position, -1 while masked
    block: int = 0
    step_in_block: int = 0
    nfe: int = 0
    started: float = field(default_factory=time.perf_counter)
    state: dict = field(default_factory=dict)  # the sampler's per-sequence state
    cancelled: bool = False
    # While the batch changes: the row's cached keys/values (prompt and canvas columns) and the
    # latest statistics of each canvas position (token [L], prob/top1/top2/entropy [4, L]).
    kv: torch.Tensor | None = None
    stats: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def prompt_ids(self) -> list[int]:
        return self.vr.request.prompt_ids


# (the sampler built for a group's rows, those rows: an index or, for every row, a slice, and
# their per-sequence state dicts)
SamplerGroup = tuple[Sampler, torch.Tensor | slice, list[dict]]


@dataclass
class Batch:
    P: int  # prompt columns: every prompt ends at column P
    W: int  # canvas columns: the widest canvas
    ids: torch.Tensor  # [B, P + W] long: prompt and canvas tokens
    attn: torch.Tensor  # [B, P + W] bool: real tokens (padding is masked out of attention)
    positions: torch.Tensor  # [B, P + W] long: positions counting real tokens only
    valid: torch.Tensor  # [B, W] bool: inside the row's canvas
    valid_host: torch.Tensor
    masked_host: torch.Tensor  # [B, W] bool: still masked, as of the last status read
    trace: torch.Tensor  # [B, W] long: the step that committed each position, -1 while masked
    # The latest statistics of every position, kept across steps: with a cache, a position
    # outside the recomputed slice keeps those of the forward that last computed it.
    grid_token: torch.Tensor  # [B, W] long
    grid_stats: torch.Tensor  # [B, 4, W] float: prob, top1, top2, entropy
    kv: KVCache | None
    key_block: torch.Tensor | None  # [B, P + W + 1]: each key column's block (block-causal)
    prompt_len_host: torch.Tensor  # [B]
    gen_len: torch.Tensor  # [B]
    gen_len_host: torch.Tensor
    block_len: torch.Tensor  # [B]
    block_len_host: torch.Tensor
    block_offset_host: torch.Tensor  # [B]: canvas columns the first block lacks (block-causal)
    steps_per_block: torch.Tensor  # [B]
    temperature: torch.Tensor  # [B]
    any_sampling: bool
    seed_keys: torch.Tensor  # [B] int64: each request's seed
    stop_at_eos: torch.Tensor  # [B] bool
    any_stop_at_eos: bool
    full_canvas_host: torch.Tensor  # [B] bool: the row's sampler reads the whole canvas
    groups: list[SamplerGroup]
    stat_fields: frozenset[str]  # the statistics the batch's samplers read (prob always)
    # Block bookkeeping, advanced by each step's status read and written back to the sequences
    # only when membership changes.
    block_host: torch.Tensor  # [B]
    step_in_block_host: torch.Tensor  # [B]
    nfe_host: torch.Tensor  # [B]
    cancelled_host: torch.Tensor  # [B] bool
    watched: list[int]  # rows that report each step (streaming, --show-steps)

    @classmethod
    def build(cls, seqs: list[Sequence], *, device: torch.device, mask_id: int, eos_id: int,
              kv: tuple[tuple[int, int, int], torch.dtype] | None,
              aligned_block: bool) -> Batch:
        """Lay out `seqs`; kv: (layout, dtype) of the cache to hold, None for none."""
        P = max(len(s.prompt_ids) for s in seqs)
        W = max(s.vr.gen_length for s in seqs)
        B = len(seqs)
        ids = torch.full((B, P + W), eos_id, dtype=torch.long)
        attn = torch.zeros((B, P + W), dtype=torch.bool)
        valid = torch.zeros((B, W), dtype=torch.bool)
        trace = torch.full((B, W), -1, dtype=torch.long)
        grid_token = torch.zeros((B, W), dtype=torch.long)
        grid_stats = torch.zeros((B, 4, W), dtype=torch.float32)
        for b, s in enumerate(seqs):
            p, L = s.prompt_ids, s.vr.gen_length
            ids[b, P - len(p): P] = torch.tensor(p)
            ids[b, P: P + L] = s.canvas
            attn[b, P - len(p): P + L] = True
            valid[b, :L] = True
            trace[b, :L] = s.trace
            if s.stats is not None:
                grid_token[b, :L], grid_stats[b, :, :L] = s.stats
        attn_dev = attn.to(device)
        positions = (attn_dev.long().cumsum(-1) - 1).clamp(min=0)
        cache = KVCache(kv[0], attn_dev, kv[1]) if kv is not None else None
        for b, s in enumerate(seqs):
            if cache is not None and s.kv is not None:
                cache.place(b, P - len(s.prompt_ids), s.kv)
            s.kv = None  # the batch holds it now: one copy of a cache, not two
        block_len = torch.tensor([s.vr.block_length for s in seqs], device=device)
        key_block = None
        if aligned_block:  # each key's block, past the end for padding
            blocks = positions // block_len[:, None]
            key_block = torch.cat([torch.where(attn_dev, blocks, P + W),
                                   torch.full((B, 1), P + W, device=device)], -1)
        temps = [s.vr.request.temperature for s in seqs]
        groups = sampler_groups(seqs, device)

        return cls(
            P=P, W=W, ids=ids.to(device), attn=attn_dev, positions=positions,
            valid=valid.to(device), valid_host=valid,
            masked_host=(ids[:, P:] == mask_id) & valid, trace=trace.to(device),
            grid_token=grid_token.to(device), grid_stats=grid_stats.to(device), kv=cache,
            key_block=key_block,
            prompt_len_host=torch.tensor([len(s.prompt_ids) for s in seqs]),
            gen_len=torch.tensor([s.vr.gen_length for s in seqs], device=device),
            gen_len_host=torch.tensor([s.vr.gen_length for s in seqs]),
            block_len=block_len, block_len_host=block_len.cpu(),
            block_offset_host=torch.tensor([s.vr.block_offset for s in seqs]),
            steps_per_block=torch.tensor([s.vr.steps_per_block for s in seqs], device=device),
            temperature=torch.tensor(temps, device=device), any_sampling=any(t > 0 for t in temps),
            seed_keys=torch.tensor([s.vr.request.seed for s in seqs], dtype=torch.long,
                                   device=device),
            stop_at_eos=torch.tensor([s.vr.request.stop_at_eos for s in seqs], device=device),
            any_stop_at_eos=any(s.vr.request.stop_at_eos for s in seqs),
            full_canvas_host=torch.tensor([s.vr.sampler_cls.full_canvas for s in seqs]),
            groups=groups,
            stat_fields=frozenset({"prob"}).union(*(sampler.stats for sampler, _, _ in groups)),
            block_host=torch.tensor([s.block for s in seqs]),
            step_in_block_host=torch.tensor([s.step_in_block for s in seqs]),
            nfe_host=torch.tensor([s.nfe for s in seqs]),
            cancelled_host=torch.tensor([s.cancelled for s in seqs]),
            watched=[b for b, s in enumerate(seqs) if s.vr.request.watch])

    @property
    def canvas(self) -> torch.Tensor:
        """[B, W] the canvases (a view into ids)."""
        return self.ids[:, self.P:]

    def write_back(self, seqs: list[Sequence]) -> None:
        """Copy the canvases, counters, statistics and cache rows back into the sequences."""
        canvas, trace = self.canvas.cpu(), self.trace.cpu()
        counters = torch.stack([self.block_host, self.step_in_block_host, self.nfe_host], -1)
        for b, (s, (block, step_in_block, nfe)) in enumerate(zip(seqs, counters.tolist())):
            L = s.vr.gen_length
            s.canvas, s.trace = canvas[b, :L].clone(), trace[b, :L].clone()
            s.block, s.step_in_block, s.nfe = block, step_in_block, nfe
            s.stats = (self.grid_token[b, :L].clone(), self.grid_stats[b, :, :L].clone())
            if self.kv is not None:
                s.kv = self.kv.row(b, self.P - len(s.prompt_ids), self.P + L)


def sampler_groups(seqs: list[Sequence], device: torch.device) -> list[SamplerGroup]:
    """Rows sharing a sampler class, with their params stacked and their per-sequence state
    dicts listed once per membership change, not on every step. A group of every row reads the
    batch tensors whole (a slice, not a gather per tensor)."""
    by_class: dict[type[Sampler], list[int]] = {}
    for b, s in enumerate(seqs):
        by_class.setdefault(s.vr.sampler_cls, []).append(b)
    return [(cls([seqs[b].vr.params for b in rows], device),
             slice(None) if len(rows) == len(seqs) else torch.tensor(rows, device=device),
             [seqs[b].state for b in rows])
            for cls, rows in by_class.items()]
