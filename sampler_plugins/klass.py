"""KLASS (KL-adaptive stability sampling): commit every candidate whose confidence is >= `conf`
and whose predictive distribution moved by less than `kl` (KL(p_t || p_{t-1})) for `history`
consecutive steps; if none qualifies, the single most confident one.

The one built-in rule that needs full distributions (`needs_probs`) and state across steps
(each sequence keeps its previous distributions and per-position stability streaks).
"""

import torch
from pydantic import Field
from unmaskd.sampler_plugins.base import Sampler, SamplerParams, StepView, top_n_mask


class KlassParams(SamplerParams):
    conf: float = Field(0.9, gt=0.0, le=1.0)
    kl: float = Field(0.01, gt=0.0)
    history: int = Field(2, ge=1, le=16)


class Klass(Sampler):
    name = "klass"
    Params = KlassParams
    needs_probs = True
    stats = frozenset({"prob"})

    def __init__(self, params, device):
        super().__init__(params, device)
        self.conf = self.param_tensor("conf")
        self.kl = self.param_tensor("kl")
        self.history = self.param_tensor("history", torch.long)

    def select(self, view: StepView) -> torch.Tensor:
        probs = view.probs
        n, W, _ = probs.shape
        prev = torch.stack([_fit(s.get("prev", probs.new_zeros(W, probs.shape[-1])), W)
                            for s in view.states])
        streak = torch.stack([_fit(s.get("streak", torch.zeros(W, dtype=torch.long,
                                                               device=probs.device)), W)
                              for s in view.states])
        has_prev = torch.tensor([("prev" in s) for s in view.states], device=probs.device)[:, None]
        tiny = torch.finfo(probs.dtype).tiny
        kl = (probs * (probs.clamp_min(tiny).log() - prev.clamp_min(tiny).log())).sum(-1)
        stable = has_prev & (kl < self.kl)
        streak = torch.where(stable, streak + 1, torch.zeros_like(streak))
        for i, state in enumerate(view.states):
            state["prev"], state["streak"] = probs[i], streak[i]
        ready = view.candidate & (view.prob >= self.conf) & (streak >= self.history)
        fallback = top_n_mask(view.prob, view.candidate, torch.ones_like(view.nfe))
        return torch.where(ready.any(-1, keepdim=True), ready, fallback)


def _fit(saved: torch.Tensor, width: int) -> torch.Tensor:
    """A row's saved per-position state at the batch's current canvas width: the width changes
    when a wider or narrower request joins or leaves the batch; positions past the row's own
    canvas are never candidates, so cutting or zero-padding them changes no decision."""
    if saved.shape[0] >= width:
        return saved[:width]
    pad = saved.new_zeros((width - saved.shape[0], *saved.shape[1:]))
    return torch.cat([saved, pad])
