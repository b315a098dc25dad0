"""Fast-dLLM's factor rule: sort candidate confidences c1 >= c2 >= ..., commit the top n for the
largest n with (n + 1) * (1 - c_n) < factor, at least one. (n + 1)(1 - c_n) grows with n, so the
committed set is the prefix of ranks that satisfy it.
"""

import torch
from pydantic import Field
from unmaskd.sampler_plugins.base import Sampler, SamplerParams, StepView, sorted_prefix_mask


class FactorParams(SamplerParams):
    factor: float = Field(1.0, gt=0.0, description="parallelism factor f")


class Factor(Sampler):
    name = "factor"
    Params = FactorParams
    stats = frozenset({"prob"})

    def __init__(self, params, device):
        super().__init__(params, device)
        self.factor = self.param_tensor("factor", torch.float64)

    def select(self, view: StepView) -> torch.Tensor:
        scores = view.prob.double().masked_fill(~view.candidate, -1.0)
        sorted_c, order = torch.sort(scores, dim=-1, descending=True, stable=True)
        n = torch.arange(1, scores.shape[-1] + 1, device=scores.device, dtype=torch.float64)
        ok = ((n + 1) * (1 - sorted_c) < self.factor) & (sorted_c >= 0)
        return sorted_prefix_mask(ok, order, view.candidate)
