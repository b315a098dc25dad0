"""EB-sampler (entropy-bounded): sort candidates by entropy ascending and commit the longest
prefix whose entropy sum minus its largest entropy is <= gamma; at least one.
"""

import torch
from pydantic import Field
from unmaskd.sampler_plugins.base import Sampler, SamplerParams, StepView, sorted_prefix_mask


class EBParams(SamplerParams):
    gamma: float = Field(0.1, ge=0.0, description="error budget (nats)")


class EntropyBounded(Sampler):
    name = "eb"
    Params = EBParams
    stats = frozenset({"prob", "entropy"})

    def __init__(self, params, device):
        super().__init__(params, device)
        self.gamma = self.param_tensor("gamma", torch.float64)

    def select(self, view: StepView) -> torch.Tensor:
        ent = view.entropy.double().masked_fill(~view.candidate, float("inf"))
        sorted_e, order = torch.sort(ent, dim=-1, stable=True)
        finite = torch.isfinite(sorted_e)
        # Sorted ascending, the prefix's largest entropy is its last one.
        prefix_cost = torch.cumsum(sorted_e.masked_fill(~finite, 0.0), -1) - sorted_e
        return sorted_prefix_mask((prefix_cost <= self.gamma) & finite, order, view.candidate)
