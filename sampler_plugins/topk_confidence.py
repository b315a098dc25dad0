"""LLaDA's low-confidence remasking: commit the k most confident masked positions.

k follows LLaDA's linear schedule (block length / steps per block, the remainder spread over the
first steps of the block), so a block is always finished within its budget.
"""

import torch
from unmaskd.sampler_plugins.base import Sampler, StepView, linear_schedule_count, top_n_mask


class TopKConfidence(Sampler):
    name = "topk_confidence"
    stats = frozenset({"prob"})

    def select(self, view: StepView) -> torch.Tensor:
        return top_n_mask(view.prob, view.candidate, linear_schedule_count(view))
