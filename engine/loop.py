"""The decoding engine: masked-diffusion decoding with the unmasking choice delegated to samplers.

    engine = Engine.from_dir(model_dir)
    results = engine.generate([GenerationRequest(prompt_ids=ids, sampler="threshold")])

This is the project's one decoding loop: the CLI, the offline eval, the server's continuous
batching and the learned policy's rollouts all call `Engine.step()`. One step for the batch:
the dLLM's logits for each row (`_forward`); confidence statistics of each row's current block
(or whole canvas, for samplers that look at it) through `kernels.confidence_stats`; each sampler
group picks positions; the engine enforces the invariants and commits; blocks advance; finished
rows retire. The only host synchronisation per step is the small status read that retires rows.

Layout: rows are left-padded so every prompt ends at column P; canvases start at P and are
right-padded to the widest canvas. Padding is masked out of attention and positions count real
tokens only, so a row's logits do not depend on its batch.

Caches (`cache="prefix"|"dual"`, Fast-dLLM's semantics): a row at the start of a block runs a full
forward that refills its keys/values; a row later in its block runs a forward over only the block
to the end of its canvas (prefix) or the block (dual), attending to its cached columns. Both kinds
of rows share a step (two forwards, one per kind), and a row counts one NFE per step either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from unmaskd.dllm.family import DiffusionLM
from unmaskd.engine.kv_cache import CACHE_MODES, KVCache
from unmaskd.engine.sequence import (
    GenerationRequest,
    InvalidRequest,
    SequenceResult,
    ValidatedRequest,
    validate,
)
from unmaskd.kernels import STAT_FIELDS, confidence_stats
from unmaskd.kernels.rng import mix
from unmaskd.sampler_plugins import Sampler, StepView


def step_rng_keys(seed_keys: torch.Tensor, nfe: torch.Tensor) -> torch.Tensor:
    """Each row's RNG key for one step, from its request seed and the steps it has done: the
    samplers' draws (random order, policy draws) never depend on the batch (kernels/rng.py)."""
    return mix(mix(seed_keys, nfe), 0x2545F491)


def enforce_invariants(commit: torch.Tensor, candidate: torch.Tensor, prob: torch.Tensor,
                       step_in_block: torch.Tensor, steps_per_block: torch.Tensor
                       ) -> torch.Tensor:
    """The invariants every sampler's choice is held to, whatever it returned ([n, W] bool):
    only candidates, at least one per step (the most confident), and everything left in the
    block at its last allowed step. Also applied by the SGLang adapter
    (unmaskd.engine.sglang_plugin), so both loops commit by one rule."""
    commit = commit & candidate
    # At least one per step: the most confident candidate.
    best = prob.masked_fill(~candidate, -1.0).argmax(-1, keepdim=True)
    none = ~commit.any(-1, keepdim=True) & candidate.any(-1, keepdim=True)
    commit = commit | (none & torch.zeros_like(commit).scatter_(-1, best, True))
    # Last allowed step of the block: commit everything left in it.
    last = (step_in_block + 1 >= steps_per_block)[:, None]
    return commit | (last & candidate)


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


@dataclass
class StepEvent:
    """What one step did to a watched sequence (for streaming and --show-steps)."""

    request_id: int
    nfe: int
    committed: list[int]  # canvas positions committed in this step
    canvas: list[int]


@dataclass
class StepReport:
    finished: list[SequenceResult]
    events: list[StepEvent]
    batch_size: int
    forward_s: float  # the dLLM forward (host time: on a GPU, launch time unless synchronised)
    sampler_s: float  # time inside the samplers' select()
    cache_bytes: int = 0  # memory held by the batch's key/value cache after the step


class Engine:
    def __init__(self, model: DiffusionLM, tokenizer, default_gen_length: int = 48,
                 device: str | torch.device = "cpu", cache: str = "none",
                 stop_token_ids: list[int] | None = None, default_block_length: int | None = None):
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = model.config
        self.device = torch.device(device)
        self.cache = cache
        self.kv: KVCache | None = None
        # Block-diffusion models (block-causal attention) decode blocks aligned to position 0
        # over an exact cache of finished blocks; the model says so, not its family.
        self.aligned_block = model.block_size if model.block_causal else None
        # The canvas and block length a request gets when it names none: a model trained on a
        # task records its own (unmaskd_task.json); else 48 and LLaDA's L/4.
        self.default_gen_length = default_gen_length
        self.default_block_length = default_block_length
        self.mask_id = self.cfg.mask_token_id
        self.eos_id = self.cfg.eos_token_id
        # What ends an answer: EOS, and any other stop token the checkpoint's
        # generation_config.json names (SDAR's chat models end a turn with <|im_end|>).
        self.stop_ids = sorted({self.eos_id, *(stop_token_ids or [])})
        self.stop_ids_dev = torch.tensor(self.stop_ids, device=self.device)
        # Per-sampler parameter defaults the model ships (LLaDA2: threshold 0.95).
        self.sampler_defaults: dict[str, dict] = model.sampler_defaults
        self.active: list[Sequence] = []
        self._next_id = 0
        self._dirty = True  # batch membership changed: rebuild batch tensors

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str = "cpu", dtype=torch.float32,
                 mask_token_id: int | None = None, default_gen_length: int | None = None,
                 cache: str = "none") -> Engine:
        """`default_gen_length` None: the canvas the folder's unmaskd_task.json records, else
        48; its block length is the default wherever it divides the canvas."""
        from unmaskd.dllm.checkpoint import load_dllm, read_task_file, stop_token_ids

        model, tokenizer = load_dllm(model_dir, dtype=dtype, device=device,
                                     mask_token_id=mask_token_id)
        trained = read_task_file(model_dir)
        return cls(model, tokenizer, default_gen_length or trained.get("gen_length", 48), device,
                   cache, stop_token_ids(model_dir), trained.get("block_length"))

    @property
    def cache_bytes(self) -> int:
        """Memory held by the batch's key/value cache (0 without a cache or an empty batch)."""
        return self.kv.nbytes if self.kv is not None else 0

    # ---- requests in and out ------------------------------------------------------------
    def validate(self, req: GenerationRequest) -> ValidatedRequest:
        defaults = self.sampler_defaults.get(req.sampler)
        if defaults:
            req = replace(req, sampler_params={**defaults, **req.sampler_params})
        return validate(req, self.default_gen_length, self.cfg.max_sequence_length,
                        self.cfg.vocab_size, self.aligned_block,
                        self.model.default_block_length == "full",
                        self.default_block_length)

    def self_test(self) -> SequenceResult:
        """Decode one short request of the default canvas, one step per block, before anything
        is served: a folder or flag whose values pass every check the loader makes but still
        cannot decode fails here, once, instead of in every request. Raises ConfigError."""
        from unmaskd.dllm.backend import ConfigError

        try:
            prompt = self.tokenizer("Hello")["input_ids"] or [self.eos_id]
            self.add(GenerationRequest(prompt, "topk_confidence", steps_per_block=1))
            while not (finished := self.step().finished):
                pass
            (result,) = finished
        except InvalidRequest as e:  # e.g. --default-gen-length past the model's context
            raise ConfigError(f"a request with the defaults (canvas {self.default_gen_length}) "
                              f"is refused: {e}") from None
        except Exception as e:  # whatever the forward, the sampler or the tokenizer raised
            self.abort_all()
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConfigError(f"the model loads but cannot decode: {type(e).__name__}: {first}"
                              ) from None
        return result

    def default_canvas(self, gen_length: int | None = None) -> tuple[int, int]:
        """The canvas and block length of a request that names neither (for clients' forms),
        or names only the canvas `gen_length` (for a report to say the blocks it got)."""
        vr = self.validate(GenerationRequest([self.eos_id], "topk_confidence",
                                             gen_length=gen_length))
        return gen_length or self.default_gen_length, vr.block_length

    def add(self, req: GenerationRequest | ValidatedRequest) -> int:
        vr = req if isinstance(req, ValidatedRequest) else self.validate(req)
        if self.active and not self._dirty:  # running rows live in the batch tensors
            self._sync_out()
        L = vr.gen_length
        seq = Sequence(self._next_id, vr,
                       canvas=torch.full((L,), self.mask_id, dtype=torch.long),
                       trace=torch.full((L,), -1, dtype=torch.long))
        self._next_id += 1
        self.active.append(seq)
        self._dirty = True
        return seq.id

    def cancel(self, request_id: int) -> None:
        """Retire a request at the next step (its result has finish_reason 'cancelled')."""
        for b, seq in enumerate(self.active):
            if seq.id == request_id:
                seq.cancelled = True
                if not self._dirty:
                    self.cancelled_host[b] = True

    def abort_all(self) -> None:
        """Drop every active request (after a failed step, or at shutdown)."""
        self.active.clear()
        self.kv = None
        self._dirty = True

    def generate(self, requests: list[GenerationRequest], max_batch_size: int = 256,
                 on_step=None) -> list[SequenceResult]:
        """Run requests to completion with continuous batching; results in request order."""
        validated = [self.validate(r) for r in requests]  # all errors before any work
        pending = list(enumerate(validated))
        ids: dict[int, int] = {}
        results: dict[int, SequenceResult] = {}
        while pending or self.active:
            while pending and len(self.active) < max_batch_size:
                i, vr = pending.pop(0)
                ids[self.add(vr)] = i
            report = self.step()
            if on_step is not None:
                on_step(report)
            for res in report.finished:
                results[ids[res.request_id]] = res
        return [results[i] for i in range(len(requests))]

    # ---- the batch ----------------------------------------------------------------------
    def _rebuild(self) -> None:
        seqs = self.active
        dev = self.device
        P = max(len(s.prompt_ids) for s in seqs)
        W = max(s.vr.gen_length for s in seqs)
        B = len(seqs)
        ids = torch.full((B, P + W), self.eos_id, dtype=torch.long)
        attn = torch.zeros((B, P + W), dtype=torch.bool)
        valid = torch.zeros((B, W), dtype=torch.bool)
        trace = torch.full((B, W), -1, dtype=torch.long)
        for b, s in enumerate(seqs):
            p, L = s.prompt_ids, s.vr.gen_length
            ids[b, P - len(p): P] = torch.tensor(p)
            ids[b, P: P + L] = s.canvas
            attn[b, P - len(p): P + L] = True
            valid[b, :L] = True
            trace[b, :L] = s.trace
        self.P, self.W = P, W
        self.ids, self.attn, self.valid = ids.to(dev), attn.to(dev), valid.to(dev)
        self.positions = (self.attn.long().cumsum(-1) - 1).clamp(min=0)
        self.trace = trace.to(dev)
        self.prompt_len_host = torch.tensor([len(s.prompt_ids) for s in seqs])
        self.gen_len_host = torch.tensor([s.vr.gen_length for s in seqs])
        # The latest statistics of every position, kept across steps: with a cache, a position
        # outside the recomputed slice keeps those of the forward that last computed it.
        self.grid_token = torch.zeros((B, W), dtype=torch.long, device=dev)
        self.grid_stats = torch.zeros((B, 4, W), dtype=torch.float32, device=dev)
        self.kv = None
        if self.cache != "none" or self.aligned_block is not None:
            dtype = next(self.model.parameters()).dtype
            self.kv = KVCache(self.model.kv_layout, self.attn, dtype)
        for b, s in enumerate(seqs):
            if s.stats is not None:
                L = s.vr.gen_length
                self.grid_token[b, :L], self.grid_stats[b, :, :L] = s.stats
            if self.kv is not None and s.kv is not None:
                self.kv.place(b, P - len(s.prompt_ids), s.kv)
            s.kv = None  # the batch holds it now: one copy of a cache, not two
        temps = [s.vr.request.temperature for s in seqs]
        self.temperature = torch.tensor(temps, device=dev)
        self.any_sampling = any(t > 0 for t in temps)
        self.seed_keys = torch.tensor([s.vr.request.seed for s in seqs], dtype=torch.long,
                                      device=dev)
        self.block_len = torch.tensor([s.vr.block_length for s in seqs], device=dev)
        self.steps_per_block = torch.tensor([s.vr.steps_per_block for s in seqs], device=dev)
        self.block_offset_host = torch.tensor([s.vr.block_offset for s in seqs])
        if self.aligned_block is not None:  # each key's block, past the end for padding
            blocks = self.positions // self.block_len[:, None]
            self.key_block = torch.cat([torch.where(self.attn, blocks, P + W),
                                        torch.full((B, 1), P + W, device=dev)], -1)
        self.gen_len = torch.tensor([s.vr.gen_length for s in seqs], device=dev)
        self.stop_at_eos = torch.tensor([s.vr.request.stop_at_eos for s in seqs], device=dev)
        self.any_stop_at_eos = any(s.vr.request.stop_at_eos for s in seqs)
        self.block_len_host, self.valid_host = self.block_len.cpu(), valid
        self.masked_host = (ids[:, P:] == self.mask_id) & valid
        self.full_canvas_host = torch.tensor([s.vr.sampler_cls.full_canvas for s in seqs])
        # Sampler groups: rows sharing a sampler class, with their params stacked and their
        # per-sequence state dicts listed once per membership change, not on every step.
        groups: dict[type[Sampler], list[int]] = {}
        for b, s in enumerate(seqs):
            groups.setdefault(s.vr.sampler_cls, []).append(b)
        # A group of every row reads the batch tensors whole (a slice, not a gather per tensor).
        self.groups = [(cls(
            [seqs[b].vr.params for b in rows], dev),
            slice(None) if len(rows) == B else torch.tensor(rows, device=dev),
            [seqs[b].state for b in rows])
            for cls, rows in groups.items()]
        # The statistics the confidence pass computes: those the batch's samplers read
        self.stat_fields = frozenset().union(*(sampler.stats for sampler, _, _ in self.groups))
        # Block bookkeeping lives on the host as tensors, advanced by each step's status read
        # and written back to the sequences only when membership changes.
        self.block_host = torch.tensor([s.block for s in seqs])
        self.step_in_block_host = torch.tensor([s.step_in_block for s in seqs])
        self.nfe_host = torch.tensor([s.nfe for s in seqs])
        self.cancelled_host = torch.tensor([s.cancelled for s in seqs])
        self.watched = [b for b, s in enumerate(seqs) if s.vr.request.watch]
        self._dirty = False

    def _sync_out(self) -> None:
        """Copy the batch's canvases back into the sequences before membership changes."""
        canvas = self.ids[:, self.P:].cpu()
        trace = self.trace.cpu()
        counters = torch.stack([self.block_host, self.step_in_block_host, self.nfe_host], -1)
        for b, (s, (block, step_in_block, nfe)) in enumerate(zip(self.active, counters.tolist())):
            L = s.vr.gen_length
            s.canvas, s.trace = canvas[b, :L].clone(), trace[b, :L].clone()
            s.block, s.step_in_block, s.nfe = block, step_in_block, nfe
            s.stats = (self.grid_token[b, :L].clone(), self.grid_stats[b, :, :L].clone())
            if self.kv is not None:
                s.kv = self.kv.row(b, self.P - len(s.prompt_ids), self.P + L)

    # ---- one denoising step -------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> StepReport:
        if self._dirty:
            self._rebuild()
        seqs, W, dev = self.active, self.W, self.device
        B = len(seqs)
        canvas = self.ids[:, self.P:]
        masked = (canvas == self.mask_id) & self.valid
        # Block bookkeeping is host-side (updated by the previous step's status read), so the
        # rows and columns to compute are known without asking the device.
        step_in_block = self.step_in_block_host.to(dev)
        nfe = self.nfe_host.to(dev)
        col = torch.arange(W)
        block_end = (self.block_host + 1) * self.block_len_host - self.block_offset_host
        block_start = (block_end - self.block_len_host).clamp(min=0)
        in_block_host = (col >= block_start[:, None]) & (col < block_end[:, None])
        t0 = time.perf_counter()
        parts, fresh = self._forward(block_start, block_end)
        forward_s = time.perf_counter() - t0
        # Statistics for the current block's masked positions (all a rule can commit), or the
        # whole canvas for samplers that look at it; those the forward did not recompute
        # (outside a cached slice) keep their latest values.
        wanted = ((in_block_host & self.masked_host)
                  | (self.full_canvas_host[:, None] & self.valid_host))
        rows, cols, logits = self._gather(parts, wanted & fresh)
        in_block = in_block_host.to(dev)
        candidate = masked & in_block
        step_keys = step_rng_keys(self.seed_keys, nfe)
        # A sampler may have the kernel apply its input layer too (the learned policy); one
        # sampler per step gets it, in the same pass over the logits. Not with a cache: some
        # of its statistics are then kept from earlier steps, not computed in this pass.
        asks = [(i, p) for i, (s, _, _) in enumerate(self.groups)
                if self.kv is None and (p := s.policy_input()) is not None]
        embed_group, policy_input = asks[0] if len(asks) == 1 else (None, None)
        stats = confidence_stats(
            logits, temperature=self.temperature[rows] if self.any_sampling else 0.0,
            seeds=mix(step_keys[rows], cols) if self.any_sampling else None,
            exclude_token_id=self.mask_id,
            policy_input=policy_input, fields=self.stat_fields)
        self.grid_token[rows, cols] = stats.token
        self.grid_stats[rows, :, cols] = torch.stack(
            [getattr(stats, name) for name in STAT_FIELDS], -1)
        shown = wanted.to(dev)
        grid = {"token": torch.where(shown, self.grid_token, 0)}
        for i, name in enumerate(STAT_FIELDS):  # None: no sampler in the batch reads it
            grid[name] = (torch.where(shown, self.grid_stats[:, i], 0.0)
                          if name in self.stat_fields else None)
        embedding = None
        if stats.embedding is not None:  # zeros where there are no statistics, like the grids
            embedding = torch.zeros((B, W, stats.embedding.shape[-1]), device=dev)
            embedding[rows, cols] = stats.embedding
        commit = torch.zeros((B, W), dtype=torch.bool, device=dev)
        t1 = time.perf_counter()
        for i, (sampler, row_idx, states) in enumerate(self.groups):
            view = StepView(
                **{k: None if v is None else v[row_idx] for k, v in grid.items()},
                candidate=candidate[row_idx],
                masked=masked[row_idx], in_block=in_block[row_idx],
                valid=self.valid[row_idx], step_in_block=step_in_block[row_idx],
                block_length=self.block_len[row_idx],
                steps_per_block=self.steps_per_block[row_idx], nfe=nfe[row_idx],
                gen_length=self.gen_len[row_idx], rng_keys=step_keys[row_idx],
                probs=(self._probs(parts, fresh, row_idx) if sampler.needs_probs else None),
                embedding=(embedding[row_idx] if embedding is not None and i == embed_group
                           else None),
                states=states)
            commit[row_idx] = sampler.select(view).to(torch.bool)
        t2 = time.perf_counter()
        commit = self._enforce(commit, candidate, grid["prob"], step_in_block)
        canvas = torch.where(commit, grid["token"], canvas)
        self.trace = torch.where(commit, nfe[:, None], self.trace)
        block_done = ~((canvas == self.mask_id) & self.valid & in_block).any(-1)
        masked = (canvas == self.mask_id) & self.valid
        all_done = ~masked.any(-1)
        if self.any_stop_at_eos:
            # Block-diffusion models stop only after a block, as their own generate functions do.
            canvas, eos_done = self._stop_at_eos(
                canvas, nfe, block_done if self.aligned_block is not None else None)
            masked = (canvas == self.mask_id) & self.valid
            all_done = all_done | eos_done
        self.ids[:, self.P:] = canvas
        watched = self.watched
        # The one host synchronisation of the step; it brings the mask bits the next step's
        # statistics are limited to.
        status = torch.cat([block_done[:, None], all_done[:, None], masked], -1).cpu()
        block_done, done = status[:, 0], status[:, 1] | self.cancelled_host
        self.masked_host = status[:, 2:]
        self.nfe_host += 1
        self.step_in_block_host = torch.where(block_done, 0, self.step_in_block_host + 1)
        self.block_host += block_done.long()
        events = []
        if watched:
            commit_host, canvas_host = commit[watched].cpu(), canvas[watched].cpu()
            for i, b in enumerate(watched):
                L = seqs[b].vr.gen_length
                events.append(StepEvent(seqs[b].id, int(self.nfe_host[b]),
                                        commit_host[i, :L].nonzero().flatten().tolist(),
                                        canvas_host[i, :L].tolist()))
        finished = [seqs[b] for b in done.nonzero().flatten().tolist()]
        if finished:
            self._sync_out()
            self.active = [s for s in seqs if s not in finished]
            self._dirty = True
            if not self.active:  # free the cache now, not when the next request arrives
                self.kv = None
        return StepReport([self._result(s) for s in finished], events, B, forward_s, t2 - t1,
                          self.cache_bytes)

    def _enforce(self, commit, candidate, prob, step_in_block) -> torch.Tensor:
        return enforce_invariants(commit, candidate, prob, step_in_block, self.steps_per_block)

    def _stop_at_eos(self, canvas, nfe, block_done: torch.Tensor | None = None):
        """With stop_at_eos, once everything before the first committed EOS is decided (and, if
        given, the current block is), the rest of the canvas becomes EOS and the row is done."""
        W = canvas.shape[1]
        col = torch.arange(W, device=canvas.device)
        is_eos = torch.isin(canvas, self.stop_ids_dev) & self.valid
        first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), W)[:, None]
        undecided = (canvas == self.mask_id) & self.valid
        prefix_done = ~(undecided & (col < first)).any(-1) & is_eos.any(-1)
        done = prefix_done & self.stop_at_eos
        if block_done is not None:
            done = done & block_done
        fill = done[:, None] & undecided
        self.trace = torch.where(fill, nfe[:, None], self.trace)
        return torch.where(fill, self.eos_id, canvas), done

    def _forward(self, block_start: torch.Tensor, block_end: torch.Tensor):
        """The dLLM's logits for this step. Returns ([(rows, logits [n, Q, V], first)], fresh):
        logits[j, q] belongs to canvas column first[j] + q of batch row rows[j]; fresh [B, W]
        marks the canvas columns that have logits this step. Host tensors but the logits."""
        if self.aligned_block is not None:
            return self._forward_aligned(block_start, block_end)
        B, P, W, dev = len(self.active), self.P, self.W, self.device
        off = self.model.logit_offset  # logits at column x predict column x + off
        full = (torch.ones(B, dtype=torch.bool) if self.kv is None
                else self.step_in_block_host == 0)  # block start: refill the row's cache
        parts, fresh = [], torch.zeros((B, W), dtype=torch.bool)
        if full.any():
            rows = full.nonzero().flatten()
            every = len(rows) == B
            pick = slice(None) if every else rows.to(dev)
            kv = self.kv.fill(None if every else pick) if self.kv is not None else None
            logits = self.model(self.ids[pick], self.attn[pick], kv=kv)
            parts.append((rows, logits[:, P - off: P - off + W], torch.zeros_like(rows)))
            fresh[rows] = self.valid_host[rows]
        if not full.all():
            # Each row's slice: the block to the end of its canvas (prefix) or the block (dual).
            # With shifted logits (off = 1) the slice's first position gets no logits: as in
            # Fast-dLLM's Dream cache, it keeps those of the block start. Shorter slices are
            # padded with the cache's scratch column, which nothing attends to.
            rows = (~full).nonzero().flatten()
            first = block_start[rows]
            stop = (self.gen_len_host if self.cache == "prefix" else block_end)[rows]
            q = torch.arange(int((stop - first).max()))
            cols = P + first[:, None] + q
            cols = torch.where(cols < P + stop[:, None], cols, self.kv.width).to(dev)
            every = len(rows) == B
            pick = torch.arange(B, device=dev) if every else rows.to(dev)
            at = (pick[:, None], cols.clamp(max=self.kv.width - 1))
            logits = self.model(self.ids[at], positions=self.positions[at],
                                kv=self.kv.attend(None if every else pick, cols))
            parts.append((rows, logits, first + off))
            col = torch.arange(W)
            fresh[rows] = (col >= first[:, None] + off) & (col < stop[:, None])
        return parts, fresh

    def _forward_aligned(self, block_start: torch.Tensor, block_end: torch.Tensor):
        """Block-diffusion models: each row runs a slice that ends with its current block, with
        the block-causal mask, over the cached keys/values of its earlier blocks (exact: a
        finished block's never change). The slice starts at the current block, except at a
        block's first step, where it starts at the finished block before it (writing that
        block's keys/values in the same forward, where the families spend a forward of its own
        that is no denoising step), and at a row's first step, where it starts at the prompt
        (its full blocks are prefilled in the same forward). Without a cache every slice starts
        at the prompt: the prefix is recomputed, with the same logits."""
        P, dev, size = self.P, self.device, self.block_len_host
        current = P - self.block_offset_host + self.block_host * size  # the block's 1st column
        end = current + size
        row_start = P - self.prompt_len_host
        first_step = self.step_in_block_host == 0
        start = torch.where(first_step, current - size, current)
        if self.cache == "none":
            start = row_start
        start = torch.where(first_step & (self.block_host == 0), row_start, start)
        off = self.model.logit_offset
        parts = []
        wide = (end - start) > 2 * size  # prefills run apart from the block-sized slices
        for kind in (wide, ~wide):
            rows = kind.nonzero().flatten()
            if not len(rows):
                continue
            q = torch.arange(int((end[rows] - start[rows]).max()))
            cols = start[rows, None] + q
            cols = torch.where(cols < end[rows, None], cols, self.kv.width).to(dev)
            every = len(rows) == len(self.active)
            pick = torch.arange(len(rows), device=dev) if every else rows.to(dev)
            at = (pick[:, None], cols.clamp(max=self.kv.width - 1))
            positions = self.positions[at]
            query_block = positions // self.block_len[pick, None]
            visible = self.key_block[pick][:, None, :] <= query_block[:, :, None]
            bias = torch.zeros(visible.shape, dtype=self.kv.k[0].dtype, device=dev)
            bias = bias.masked_fill(~visible, float("-inf"))[:, None]
            logits = self.model(self.ids[at], positions=positions,
                                kv=self.kv.attend(None if every else pick, cols, bias))
            parts.append((rows, logits, start[rows] + off - P))
        col = torch.arange(self.W)
        fresh = (col >= block_start[:, None]) & (col < block_end[:, None])
        return parts, fresh

    def _gather(self, parts, need: torch.Tensor):
        """The logits rows of the (row, column) pairs in `need`, and those pairs on the device."""
        rows, cols, logits = [], [], []
        for part_rows, part_logits, first in parts:
            j, c = need[part_rows].nonzero(as_tuple=True)
            rows.append(part_rows[j])
            cols.append(c)
            logits.append(part_logits[j.to(self.device), (c - first[j]).to(self.device)])
        return (torch.cat(rows).to(self.device), torch.cat(cols).to(self.device),
                torch.cat(logits))

    def _probs(self, parts, fresh: torch.Tensor, row_idx: torch.Tensor) -> torch.Tensor:
        """Full distributions [n, W, V] of some rows (uniform where this step has no logits).
        Only `fresh` columns take logits: a row whose slice is shorter than its part's widest
        has padded query slots, whose logits (computed from the scratch column) would otherwise
        land on its next block and make a stateful sampler (KLASS) depend on its neighbours."""
        V = parts[0][1].shape[-1]
        logits = torch.zeros((len(self.active), self.W, V), device=self.device)
        for part_rows, part_logits, first in parts:
            cols = first[:, None] + torch.arange(part_logits.shape[1])
            inside = (cols >= 0) & (cols < self.W)
            keep = inside & fresh[part_rows[:, None], cols.clamp(0, self.W - 1)]
            j, q = keep.nonzero(as_tuple=True)
            logits[part_rows[j].to(self.device), cols[j, q].to(self.device)] = (
                part_logits[j.to(self.device), q.to(self.device)].float())
        logits = logits[row_idx]
        logits[..., self.mask_id] = float("-inf")
        return logits.softmax(-1)

    def render_canvas(self, canvas: list[int], mask_glyph: str = "░") -> str:
        """A canvas as text for watching it fill (streaming, --show-steps): undecided positions
        as a glyph, one per token, EOS as "·", newlines as "⏎"."""
        pieces = [mask_glyph if t == self.mask_id else self.tokenizer.decode([t])
                  for t in canvas]
        eos_text = self.tokenizer.decode([self.eos_id])
        return "".join("·" if p == eos_text else p for p in pieces).replace("\n", "⏎")

    def _result(self, s: Sequence) -> SequenceResult:
        tokens = s.canvas.tolist()
        end = next((i for i, t in enumerate(tokens) if t in self.stop_ids), len(tokens))
        text = self.tokenizer.decode(tokens[:end], skip_special_tokens=False)
        trace = s.trace.tolist()
        counts = [0] * s.nfe
        for t in trace:
            if t >= 0:
                counts[t] += 1
        reason = "cancelled" if s.cancelled else ("stop" if end < len(tokens) else "length")
        return SequenceResult(
            request_id=s.id, text=text, token_ids=tokens, nfe=s.nfe,
            tokens_per_step=sum(counts) / max(1, s.nfe), step_counts=counts, trace=trace,
            wall_s=time.perf_counter() - s.started, finish_reason=reason,
            gen_length=s.vr.gen_length, sampler_state=s.state)


__all__ = ["Engine", "GenerationRequest", "InvalidRequest", "SequenceResult", "StepReport"]
