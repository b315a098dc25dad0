"""Fast-dLLM's confidence-threshold parallel decoding, with the block-diffusion families' floor.

Every candidate whose confidence is at least `threshold` is committed (Fast-dLLM drops a
candidate only when it is below), and never fewer than the linear schedule's k for this step:
the k most confident instead. With one step per position (the default `steps`) k is 1, which is
Fast-dLLM's "the most confident is always committed"; with fewer steps it is SDAR's and
LLaDA2's "dynamic low confidence" rule (they compare with > rather than >=, which differs only
at a confidence exactly equal to the threshold).
"""

import torch
from pydantic import Field
from unmaskd.sampler_plugins.base import (
    Sampler,
    SamplerParams,
    StepView,
    linear_schedule_count,
    top_n_mask,
)


class ThresholdParams(SamplerParams):
    threshold: float = Field(0.9, gt=0.0, le=1.0, description="commit if confidence >= this")


class Threshold(Sampler):
    name = "threshold"
    Params = ThresholdParams
    stats = frozenset({"prob"})

    def __init__(self, params, device):
        super().__init__(params, device)
        self.threshold = self.param_tensor("threshold")

    def select(self, view: StepView) -> torch.Tensor:
        floor = top_n_mask(view.prob, view.candidate, linear_schedule_count(view))
        return floor | (view.candidate & (view.prob >= self.threshold.to(view.prob.dtype)))
