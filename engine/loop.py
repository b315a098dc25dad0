"""The decoding engine: masked-diffusion decoding with the unmasking choice delegated to samplers.

    engine = Engine.from_dir(model_dir)
    results = engine.generate([GenerationRequest(prompt_ids=ids, sampler="threshold")])

This is the project's one decoding loop: the CLI, the offline eval, the server's continuous
batching and the learned policy's rollouts all call `Engine.step()`. One step for the batch
(`Batch`, engine/batch.py, rebuilt when membership changes): the dLLM's logits for each row
(`_forward`); confidence statistics of each row's current block's masked positions (or whole
canvas, for samplers that look at it) through `kernels.confidence_stats`, as a `StepView`
(`_step_view`); each sampler group picks positions; the engine enforces the invariants and
commits; blocks advance; finished rows retire (`_commit`). The only host synchronisation per
step is the small status read that retires rows.

Padding is masked out of attention and positions count real tokens only, so a row's logits do
not depend on its batch.

Caches (`cache="prefix"|"dual"`, Fast-dLLM's semantics): a row at the start of a block runs a full
forward that refills its keys/values; a row later in its block runs a forward over only the block
to the end of its canvas (prefix) or the block (dual), attending to its cached columns. Both kinds
of rows share a step (two forwards, one per kind), and a row counts one NFE per step either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from unmaskd.dllm.family import DiffusionLM
from unmaskd.engine.batch import Batch, Sequence
from unmaskd.engine.kv_cache import CACHE_MODES
from unmaskd.engine.sequence import (
    GenerationRequest,
    InvalidRequest,
    SequenceResult,
    ValidatedRequest,
    validate,
)
from unmaskd.kernels import STAT_FIELDS, confidence_stats
from unmaskd.kernels.rng import mix
from unmaskd.sampler_plugins import StepView


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
        self.batch: Batch | None = None  # the active requests as tensors (engine/batch.py)
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
        kv = self.batch.kv if self.batch is not None else None
        return kv.nbytes if kv is not None else 0

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
            self.batch.write_back(self.active)
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
                    self.batch.cancelled_host[b] = True

    def abort_all(self) -> None:
        """Drop every active request (after a failed step, or at shutdown)."""
        self.active.clear()
        self.batch = None
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
        kv = None
        if self.cache != "none" or self.aligned_block is not None:
            kv = (self.model.kv_layout, next(self.model.parameters()).dtype)
        self.batch = Batch.build(self.active, device=self.device, mask_id=self.mask_id,
                                 eos_id=self.eos_id, kv=kv,
                                 aligned_block=self.aligned_block is not None)
        self._dirty = False

    # ---- one denoising step -------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> StepReport:
        """One denoising step for the batch: the forward, the statistics, each sampler group's
        choice, the commit, and the one host read that retires finished rows."""
        if self._dirty:
            self._rebuild()
        batch = self.batch
        # Block bookkeeping is host-side (updated by the previous step's status read), so the
        # rows and columns to compute are known without asking the device.
        block_end = (batch.block_host + 1) * batch.block_len_host - batch.block_offset_host
        block_start = (block_end - batch.block_len_host).clamp(min=0)
        col = torch.arange(batch.W)
        in_block = (col >= block_start[:, None]) & (col < block_end[:, None])
        t0 = time.perf_counter()
        parts, fresh = self._forward(block_start, block_end)
        forward_s = time.perf_counter() - t0
        view, embed_group = self._step_view(parts, fresh, in_block)
        t1 = time.perf_counter()
        commit = torch.zeros_like(view.candidate)
        for i, (sampler, row_idx, states) in enumerate(batch.groups):
            rows = view.of_rows(
                row_idx, states,
                probs=self._probs(parts, fresh, row_idx) if sampler.needs_probs else None,
                embedding=view.embedding[row_idx] if i == embed_group else None)
            commit[row_idx] = sampler.select(rows).to(torch.bool)
        sampler_s = time.perf_counter() - t1
        finished, events = self._commit(view, commit)
        return StepReport([self._result(s) for s in finished], events, len(view.candidate),
                          forward_s, sampler_s, self.cache_bytes)

    def _step_view(self, parts, fresh: torch.Tensor, in_block_host: torch.Tensor
                   ) -> tuple[StepView, int | None]:
        """The whole batch's StepView for this step's logits, and which sampler group gets the
        policy input layer the kernel applied (None: none asked or it was not granted)."""
        batch, dev = self.batch, self.device
        canvas = batch.canvas
        masked = (canvas == self.mask_id) & batch.valid
        nfe = batch.nfe_host.to(dev)
        # Statistics for the current block's masked positions (all a rule can commit), or the
        # whole canvas for samplers that look at it; those the forward did not recompute
        # (outside a cached slice) keep their latest values.
        wanted = ((in_block_host & batch.masked_host)
                  | (batch.full_canvas_host[:, None] & batch.valid_host))
        rows, cols, logits = self._gather(parts, wanted & fresh)
        step_keys = step_rng_keys(batch.seed_keys, nfe)
        # A sampler may have the kernel apply its input layer too (the learned policy); one
        # sampler per step gets it, in the same pass over the logits. Not with a cache: some
        # of its statistics are then kept from earlier steps, not computed in this pass.
        asks = [(i, p) for i, (s, _, _) in enumerate(batch.groups)
                if batch.kv is None and (p := s.policy_input()) is not None]
        embed_group, policy_input = asks[0] if len(asks) == 1 else (None, None)
        stats = confidence_stats(
            logits, temperature=batch.temperature[rows] if batch.any_sampling else 0.0,
            seeds=mix(step_keys[rows], cols) if batch.any_sampling else None,
            exclude_token_id=self.mask_id, policy_input=policy_input, fields=batch.stat_fields)
        batch.grid_token[rows, cols] = stats.token
        batch.grid_stats[rows, :, cols] = torch.stack(
            [getattr(stats, name) for name in STAT_FIELDS], -1)
        shown = wanted.to(dev)
        grid = {name: (torch.where(shown, batch.grid_stats[:, i], 0.0)
                       if name in batch.stat_fields else None)  # None: no sampler reads it
                for i, name in enumerate(STAT_FIELDS)}
        embedding = None
        if stats.embedding is not None:  # zeros where there are no statistics, like the grids
            embedding = torch.zeros((*canvas.shape, stats.embedding.shape[-1]), device=dev)
            embedding[rows, cols] = stats.embedding
        in_block = in_block_host.to(dev)
        view = StepView(
            token=torch.where(shown, batch.grid_token, 0), **grid,
            candidate=masked & in_block, masked=masked, in_block=in_block, valid=batch.valid,
            step_in_block=batch.step_in_block_host.to(dev), block_length=batch.block_len,
            steps_per_block=batch.steps_per_block, nfe=nfe, gen_length=batch.gen_len,
            rng_keys=step_keys, embedding=embedding)
        return view, embed_group

    def _commit(self, view: StepView, commit: torch.Tensor
                ) -> tuple[list[Sequence], list[StepEvent]]:
        """Hold the samplers' choice to the invariants, commit it, stop rows at EOS, advance
        blocks, and read which rows finished (the step's one host synchronisation)."""
        batch, seqs = self.batch, self.active
        commit = self._enforce(commit, view.candidate, view.prob, view.step_in_block)
        canvas = torch.where(commit, view.token, batch.canvas)
        batch.trace = torch.where(commit, view.nfe[:, None], batch.trace)
        block_done = ~((canvas == self.mask_id) & batch.valid & view.in_block).any(-1)
        masked = (canvas == self.mask_id) & batch.valid
        all_done = ~masked.any(-1)
        if batch.any_stop_at_eos:
            # Block-diffusion models stop only after a block, as their own generate functions do.
            canvas, eos_done = self._stop_at_eos(
                canvas, view.nfe, block_done if self.aligned_block is not None else None)
            masked = (canvas == self.mask_id) & batch.valid
            all_done = all_done | eos_done
        batch.canvas[:] = canvas
        # The one host synchronisation of the step; it brings the mask bits the next step's
        # statistics are limited to.
        status = torch.cat([block_done[:, None], all_done[:, None], masked], -1).cpu()
        block_done, done = status[:, 0], status[:, 1] | batch.cancelled_host
        batch.masked_host = status[:, 2:]
        batch.nfe_host += 1
        batch.step_in_block_host = torch.where(block_done, 0, batch.step_in_block_host + 1)
        batch.block_host += block_done.long()
        events = []
        if batch.watched:
            commit_host, canvas_host = commit[batch.watched].cpu(), canvas[batch.watched].cpu()
            for i, b in enumerate(batch.watched):
                L = seqs[b].vr.gen_length
                events.append(StepEvent(seqs[b].id, int(batch.nfe_host[b]),
                                        commit_host[i, :L].nonzero().flatten().tolist(),
                                        canvas_host[i, :L].tolist()))
        finished = [seqs[b] for b in done.nonzero().flatten().tolist()]
        if finished:
            batch.write_back(seqs)
            self.active = [s for s in seqs if s not in finished]
            self._dirty = True
            if not self.active:  # free the cache now, not when the next request arrives
                self.batch = None
        return finished, events

    def _enforce(self, commit, candidate, prob, step_in_block) -> torch.Tensor:
        batch = self.batch
        return enforce_invariants(commit, candidate, prob, step_in_block, batch.steps_per_block)

    def _stop_at_eos(self, canvas, nfe, block_done: torch.Tensor | None = None):
        """With stop_at_eos, once everything before the first committed EOS is decided (and, if
        given, the current block is), the rest of the canvas becomes EOS and the row is done."""
        batch = self.batch
        W = canvas.shape[1]
        col = torch.arange(W, device=canvas.device)
        is_eos = torch.isin(canvas, self.stop_ids_dev) & batch.valid
        first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), W)[:, None]
        undecided = (canvas == self.mask_id) & batch.valid
        prefix_done = ~(undecided & (col < first)).any(-1) & is_eos.any(-1)
        done = prefix_done & batch.stop_at_eos
        if block_done is not None:
            done = done & block_done
        fill = done[:, None] & undecided
        batch.trace = torch.where(fill, nfe[:, None], batch.trace)
        return torch.where(fill, self.eos_id, canvas), done

    def _forward(self, block_start: torch.Tensor, block_end: torch.Tensor):
        """The dLLM's logits for this step. Returns ([(rows, logits [n, Q, V], first)], fresh):
        logits[j, q] belongs to canvas column first[j] + q of batch row rows[j]; fresh [B, W]
        marks the canvas columns that have logits this step. Host tensors but the logits."""
        batch = self.batch
        if self.aligned_block is not None:
            return self._forward_aligned(block_start, block_end)
        B, P, W, dev = len(self.active), batch.P, batch.W, self.device
        off = self.model.logit_offset  # logits at column x predict column x + off
        full = (torch.ones(B, dtype=torch.bool) if batch.kv is None
                else batch.step_in_block_host == 0)  # block start: refill the row's cache
        parts, fresh = [], torch.zeros((B, W), dtype=torch.bool)
        if full.any():
            rows = full.nonzero().flatten()
            every = len(rows) == B
            pick = slice(None) if every else rows.to(dev)
            kv = batch.kv.fill(None if every else pick) if batch.kv is not None else None
            logits = self.model(batch.ids[pick], batch.attn[pick], kv=kv)
            parts.append((rows, logits[:, P - off: P - off + W], torch.zeros_like(rows)))
            fresh[rows] = batch.valid_host[rows]
        if not full.all():
            # Each row's slice: the block to the end of its canvas (prefix) or the block (dual).
            # With shifted logits (off = 1) the slice's first position gets no logits: as in
            # Fast-dLLM's Dream cache, it keeps those of the block start. Shorter slices are
            # padded with the cache's scratch column, which nothing attends to.
            rows = (~full).nonzero().flatten()
            first = block_start[rows]
            stop = (batch.gen_len_host if self.cache == "prefix" else block_end)[rows]
            q = torch.arange(int((stop - first).max()))
            cols = P + first[:, None] + q
            cols = torch.where(cols < P + stop[:, None], cols, batch.kv.width).to(dev)
            every = len(rows) == B
            pick = torch.arange(B, device=dev) if every else rows.to(dev)
            at = (pick[:, None], cols.clamp(max=batch.kv.width - 1))
            logits = self.model(batch.ids[at], positions=batch.positions[at],
                                kv=batch.kv.attend(None if every else pick, cols))
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
        batch = self.batch
        P, dev, size = batch.P, self.device, batch.block_len_host
        current = P - batch.block_offset_host + batch.block_host * size  # the block's 1st column
        end = current + size
        row_start = P - batch.prompt_len_host
        first_step = batch.step_in_block_host == 0
        start = torch.where(first_step, current - size, current)
        if self.cache == "none":
            start = row_start
        start = torch.where(first_step & (batch.block_host == 0), row_start, start)
        off = self.model.logit_offset
        parts = []
        wide = (end - start) > 2 * size  # prefills run apart from the block-sized slices
        for kind in (wide, ~wide):
            rows = kind.nonzero().flatten()
            if not len(rows):
                continue
            q = torch.arange(int((end[rows] - start[rows]).max()))
            cols = start[rows, None] + q
            cols = torch.where(cols < end[rows, None], cols, batch.kv.width).to(dev)
            every = len(rows) == len(self.active)
            pick = torch.arange(len(rows), device=dev) if every else rows.to(dev)
            at = (pick[:, None], cols.clamp(max=batch.kv.width - 1))
            positions = batch.positions[at]
            query_block = positions // batch.block_len[pick, None]
            visible = batch.key_block[pick][:, None, :] <= query_block[:, :, None]
            bias = torch.zeros(visible.shape, dtype=batch.kv.k[0].dtype, device=dev)
            bias = bias.masked_fill(~visible, float("-inf"))[:, None]
            logits = self.model(batch.ids[at], positions=positions,
                                kv=batch.kv.attend(None if every else pick, cols, bias))
            parts.append((rows, logits, start[rows] + off - P))
        col = torch.arange(batch.W)
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
        batch = self.batch
        V = parts[0][1].shape[-1]
        logits = torch.zeros((len(self.active), batch.W, V), device=self.device)
        for part_rows, part_logits, first in parts:
            cols = first[:, None] + torch.arange(part_logits.shape[1])
            inside = (cols >= 0) & (cols < batch.W)
            keep = inside & fresh[part_rows[:, None], cols.clamp(0, batch.W - 1)]
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
