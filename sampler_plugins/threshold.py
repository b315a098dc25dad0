"""Fast-dLLM's confidence-threshold parallel decoding.

The most confident candidate is always committed; every other candidate is committed unless its
confidence is below `threshold` (Fast-dLLM drops a candidate only when it is below).
"""

import torch
from pydantic import Field
from unmaskd.sampler_plugins.base import Sampler, SamplerParams, StepView, top_n_mask


class ThresholdParams(SamplerParams):
    threshold: float = Field(0.9, gt=0.0, le=1.0, description="commit if confidence >= this")


class Threshold(Sampler):
    name = "threshold"
    Params = ThresholdParams

    def __init__(self, params, device):
        super().__init__(params, device)
        self.threshold = self.param_tensor("threshold")

    def select(self, view: StepView) -> torch.Tensor:
        best = top_n_mask(view.prob, view.candidate, torch.ones_like(view.nfe))
        return best | (view.candidate & (view.prob >= self.threshold.to(view.prob.dtype)))
