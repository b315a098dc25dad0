"""Dream's ranked unmasking (`diffusion_generate`'s `alg`): `maskgit_plus` (rank by the proposed
token's probability), `margin` (Dream's `topk_margin`: p1 - p2) and `entropy` (-entropy).

Dream commits n = int(masked * (1 - s / t)) positions per step, (t, s) consecutive points of the
time grid torch.linspace(1, eps, steps + 1), and everything left at the last step. The grid and
the count are computed as Dream does, in float32 with torch's own linspace on the decoding
device, so n is Dream's to the last rounding. Here the grid runs over each block's step budget
and `masked` counts the block's still-masked positions: with one block over the canvas (Dream
models' default block length) that is Dream's own decoding. Where Dream would commit nothing
(n = 0), we commit the single best-ranked position: the engine never spends a step without
committing.
"""

import torch
from pydantic import Field
from unmaskd.sampler_plugins.base import Sampler, SamplerParams, StepView, top_n_mask


class DreamParams(SamplerParams):
    eps: float = Field(1e-3, gt=0.0, lt=1.0, description="end of Dream's time grid")


class _DreamRanked(Sampler):
    Params = DreamParams

    def __init__(self, params, device):
        super().__init__(params, device)
        self.grid: torch.Tensor | None = None  # [n, max steps + 1], built at the first step

    def timesteps(self, view: StepView) -> torch.Tensor:
        """Each row's time grid. A row keeps its step budget for life and the sampler is rebuilt
        when the batch changes, so the budgets are read to the host once per membership."""
        if self.grid is None:
            steps = view.steps_per_block.tolist()
            self.grid = torch.ones((len(steps), max(steps) + 1), device=view.prob.device)
            for row, (n, p) in enumerate(zip(steps, self.params)):
                self.grid[row, :n + 1] = torch.linspace(1, p.eps, n + 1, device=view.prob.device)
        return self.grid

    def count(self, view: StepView) -> torch.Tensor:
        grid, i = self.timesteps(view), view.step_in_block[:, None]
        t, s = grid.gather(1, i)[:, 0], grid.gather(1, i + 1)[:, 0]
        masked = view.candidate.sum(-1)
        # float32 throughout, truncated, as Dream's int(num_mask_token * (1 - s / t)). Dream may
        # transfer 0 tokens in a step; the engine commits at least one, so take it by this
        # rule's own ranking rather than leave the choice to the engine's confidence fallback.
        n = (masked.float() * (1 - s / t)).long().clamp(min=1)
        return torch.where(view.step_in_block + 1 >= view.steps_per_block, masked, n)

    def score(self, view: StepView) -> torch.Tensor:
        raise NotImplementedError

    def select(self, view: StepView) -> torch.Tensor:
        return top_n_mask(self.score(view), view.candidate, self.count(view))


class MaskgitPlus(_DreamRanked):
    name = "maskgit_plus"
    stats = frozenset({"prob"})

    def score(self, view: StepView) -> torch.Tensor:
        return view.prob


class Margin(_DreamRanked):
    name = "margin"
    stats = frozenset({"prob", "top1", "top2"})

    def score(self, view: StepView) -> torch.Tensor:
        return view.top1 - view.top2


class Entropy(_DreamRanked):
    name = "entropy"
    stats = frozenset({"prob", "entropy"})

    def score(self, view: StepView) -> torch.Tensor:
        return -view.entropy
