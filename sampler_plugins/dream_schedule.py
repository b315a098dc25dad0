"""Dream's ranked unmasking: `margin` (rank by p1 - p2) and `entropy` (rank by -entropy).

Dream commits n = int(masked * (1 - s / t)) positions per step on the time grid
t_i = linspace(1, eps, steps + 1), and everything left at the last step. Here the grid runs over
each block's step budget and `masked` counts the block's still-masked positions. Where Dream
would commit nothing (n = 0), we commit the single best-ranked position: the engine never
spends a step without committing.
"""

import torch
from pydantic import Field
from unmaskd.sampler_plugins.base import Sampler, SamplerParams, StepView, top_n_mask


class DreamParams(SamplerParams):
    eps: float = Field(1e-3, gt=0.0, lt=1.0, description="end of Dream's time grid")


def dream_count(view: StepView, eps: torch.Tensor) -> torch.Tensor:
    steps = view.steps_per_block.double()
    i = view.step_in_block.double()
    t = 1 - (1 - eps.squeeze(-1)) * i / steps
    s = 1 - (1 - eps.squeeze(-1)) * (i + 1) / steps
    masked = view.candidate.sum(-1)
    # Dream may transfer 0 tokens in a step; the engine commits at least one, so take it by
    # this rule's own ranking rather than leave the choice to the engine's confidence fallback.
    n = (masked.double() * (1 - s / t)).floor().long().clamp(min=1)
    return torch.where(view.step_in_block + 1 >= view.steps_per_block, masked, n)


class _DreamRanked(Sampler):
    Params = DreamParams

    def __init__(self, params, device):
        super().__init__(params, device)
        self.eps = self.param_tensor("eps", torch.float64)

    def score(self, view: StepView) -> torch.Tensor:
        raise NotImplementedError

    def select(self, view: StepView) -> torch.Tensor:
        return top_n_mask(self.score(view), view.candidate, dream_count(view, self.eps))


class Margin(_DreamRanked):
    name = "margin"

    def score(self, view: StepView) -> torch.Tensor:
        return view.top1 - view.top2


class Entropy(_DreamRanked):
    name = "entropy"

    def score(self, view: StepView) -> torch.Tensor:
        return -view.entropy
