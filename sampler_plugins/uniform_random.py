"""Random unmasking: k positions uniformly at random, k from LLaDA's linear schedule.

Draws come from the request's counter-based RNG (seed, step), so results are reproducible and
do not depend on which other requests share the batch.
"""

import torch
from unmaskd.sampler_plugins.base import (
    Sampler,
    StepView,
    counter_uniform,
    linear_schedule_count,
    top_n_mask,
)


class RandomOrder(Sampler):
    name = "random"
    stats = frozenset({"prob"})  # the engine's fallback commit ranks by it

    def select(self, view: StepView) -> torch.Tensor:
        noise = counter_uniform(view.rng_keys, view.prob.shape[-1]).to(view.prob.dtype)
        return top_n_mask(noise, view.candidate, linear_schedule_count(view))
