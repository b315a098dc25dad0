"""One SGLang denoising step decided by an unmaskd sampler, on the view the engine builds.

SGLang hands an algorithm each request's current block (B token ids, edited in place) and its
logits. The engine (engine/loop.py) gives a sampler a `StepView` over the request's *canvas*
(columns 0..L-1 after the prompt) instead: for a block-causal model, the current block's fresh
statistics, earlier blocks' statistics from the last step that computed them (samplers that
look at the whole canvas), their mask bits, the step counters and a per-step RNG key. This
module keeps, per request (SGLang's `rid`), what that needs across SGLang's blocks: the prompt
length (the canvas origin), the steps done (NFE), the step in the block, the statistics of the
columns decoded so far and the sampler's per-sequence state; and it rebuilds that view from
the block's logits. The sampler's `select` and the engine's `enforce_invariants` then decide,
and the committed tokens go back into the block.

The view's canvas: for the learned policy, `gen_length` (the YAML's, else the policy's training
canvas) grown to whole blocks as the engine grows it for this prompt, and beyond it as far as
the request has decoded; for the other samplers, the blocks decoded so far (they read only the
current block). Blocks are aligned to absolute position 0 in both loops, so a block's columns
are the same.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from unmaskd.engine.loop import enforce_invariants, step_rng_keys
from unmaskd.engine.sglang_plugin.config import SamplerSetup
from unmaskd.kernels import confidence_stats
from unmaskd.sampler_plugins import StepView

STAT_NAMES = ("prob", "top1", "top2", "entropy")


@dataclass
class Track:
    """One request's decoding state as the engine's `Sequence` keeps it, across SGLang's
    blocks (SGLang builds an algorithm's step states anew for every block)."""

    prompt_len: int
    nfe: int = 0
    block_start: int = -1  # absolute position of the block in progress
    step_in_block: int = 0
    token: torch.Tensor | None = None  # [columns decoded so far] latest proposed tokens
    stats: torch.Tensor | None = None  # [4, columns decoded so far] latest prob/top1/top2/entropy
    state: dict = field(default_factory=dict)  # the sampler's per-sequence state


class BlockStepper:
    """Decides SGLang's steps with one sampler setup. `max_tracked` bounds the requests
    remembered: SGLang does not tell an algorithm when a request ends, so the least recently
    stepped ones are forgotten first."""

    def __init__(self, setup: SamplerSetup, block_size: int, mask_id: int, max_tracked: int):
        self.setup, self.block_size, self.mask_id = setup, block_size, mask_id
        self.max_tracked = max_tracked
        self.tracks: OrderedDict[str, Track] = OrderedDict()

    def canvas_end(self, prompt_len: int) -> int:
        """The learned policy's canvas for this prompt, in columns: gen_length grown until
        prompt + canvas fill whole blocks (the engine's validate()); 0 for other samplers."""
        if self.setup.gen_length is None:
            return 0
        B = self.block_size
        return -(-(prompt_len + self.setup.gen_length) // B) * B - prompt_len

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, logits: torch.Tensor,
             prompt_mask: torch.Tensor | None, block_starts: list[int], rids: list[str]
             ) -> list[bool]:
        """input_ids [n * B] (edited in place), logits [n * B, V], prompt_mask [n, B] or None
        (then every non-mask id of the block counts as decided), block_starts: each block's
        absolute position. Returns, per request, whether its block began this step with no
        mask left (SGLang's done: a forward has persisted its last tokens)."""
        n, B = len(rids), self.block_size
        ids = input_ids.view(n, B)
        undecided = ids == self.mask_id
        if prompt_mask is not None:
            undecided &= ~prompt_mask.bool()
        counts = undecided.sum(-1).tolist()  # the step's one host read
        done = [c == 0 for c in counts]
        rows = [i for i in range(n) if not done[i]]
        if rows:
            self._decide(ids, logits.view(n, B, -1), undecided, rows,
                         [self._track(rids[i], block_starts[i], B - counts[i]) for i in rows])
        return done

    def _track(self, rid: str, block_start: int, decided: int) -> Track:
        """The request's track; a new one at its first decoding step, where the block's decided
        positions are the prompt's tail (blocks are aligned to position 0)."""
        track = self.tracks.get(rid)
        if track is None:
            track = self.tracks[rid] = Track(prompt_len=block_start + decided)
            while len(self.tracks) > self.max_tracked:
                self.tracks.popitem(last=False)
        self.tracks.move_to_end(rid)
        if track.block_start != block_start:
            track.block_start, track.step_in_block = block_start, 0
        return track

    def _decide(self, ids: torch.Tensor, logits: torch.Tensor, undecided: torch.Tensor,
                rows: list[int], tracks: list[Track]) -> None:
        setup, B, dev = self.setup, self.block_size, ids.device
        m = len(rows)
        row_idx = torch.tensor(rows, device=dev)
        first = [t.block_start - t.prompt_len for t in tracks]  # canvas column of position 0
        widths = [max(self.canvas_end(t.prompt_len), f + B) for t, f in zip(tracks, first)]
        W = max(widths)
        col = torch.arange(W, device=dev)
        first_t = torch.tensor(first, device=dev)[:, None]
        width_t = torch.tensor(widths, device=dev)[:, None]
        # Block position j of row r is canvas column first[r] + j (negative: the prompt's tail).
        block_cols = first_t + torch.arange(B, device=dev)
        in_canvas = block_cols >= 0
        r_idx, j_idx = in_canvas.nonzero(as_tuple=True)
        c_idx = block_cols[r_idx, j_idx]

        stats = confidence_stats(logits[row_idx].reshape(m * B, -1), temperature=0.0,
                                 exclude_token_id=self.mask_id)
        fresh = [getattr(stats, name).view(m, B) for name in ("token", *STAT_NAMES)]
        grids = [torch.zeros((m, W), dtype=g.dtype, device=dev) for g in fresh]
        if setup.sampler_cls.full_canvas:  # earlier blocks: their latest statistics
            for r, t in enumerate(tracks):
                if t.token is not None:
                    k = max(0, min(t.token.shape[0], first[r]))
                    grids[0][r, :k] = t.token[:k]
                    for g, s in zip(grids[1:], t.stats):
                        g[r, :k] = s[:k]
        for g, f in zip(grids, fresh):
            g[r_idx, c_idx] = f[r_idx, j_idx]

        in_block = (col >= first_t.clamp(min=0)) & (col < first_t + B)
        valid = col < width_t
        masked = valid & (col >= first_t + B)  # later blocks: all masked
        masked[r_idx, c_idx] = undecided[row_idx][r_idx, j_idx]
        candidate = masked & in_block
        step_in_block = torch.tensor([t.step_in_block for t in tracks], device=dev)
        nfe = torch.tensor([t.nfe for t in tracks], device=dev)
        steps = torch.full((m,), setup.steps_per_block, device=dev)
        view = StepView(
            token=grids[0], **dict(zip(STAT_NAMES, grids[1:])), candidate=candidate,
            masked=masked, in_block=in_block, valid=valid, step_in_block=step_in_block,
            steps_per_block=steps, block_length=torch.full((m,), B, device=dev), nfe=nfe,
            gen_length=width_t[:, 0],
            rng_keys=step_rng_keys(torch.full((m,), setup.seed, device=dev), nfe),
            probs=(self._probs(logits[row_idx], r_idx, j_idx, c_idx, W)
                   if setup.sampler_cls.needs_probs else None),
            states=[t.state for t in tracks])
        sampler = setup.sampler_cls([setup.params] * m, dev)
        commit = enforce_invariants(sampler.select(view).to(torch.bool), candidate, grids[1],
                                    step_in_block, steps)

        block = ids[row_idx]
        take = torch.zeros_like(undecided[row_idx])
        take[r_idx, j_idx] = commit[r_idx, c_idx]
        new = block.clone()
        new[r_idx, j_idx] = grids[0][r_idx, c_idx]
        ids[row_idx] = torch.where(take, new, block)  # in place: SGLang's tensor

        for r, t in enumerate(tracks):
            t.nfe += 1
            t.step_in_block += 1
            if setup.sampler_cls.full_canvas:
                end = first[r] + B
                t.token = grids[0][r, :end].clone()
                t.stats = torch.stack([g[r, :end] for g in grids[1:]])

    def _probs(self, logits, r_idx, j_idx, c_idx, W) -> torch.Tensor:
        """Full distributions [m, W, V] as the engine gives them (needs_probs samplers): the
        block's columns from its logits, uniform where this step has none; never the mask."""
        m, _, V = logits.shape
        grid = torch.zeros((m, W, V), device=logits.device)
        grid[r_idx, c_idx] = logits[r_idx, j_idx].float()
        grid[..., self.mask_id] = float("-inf")
        return grid.softmax(-1)
