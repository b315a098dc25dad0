"""`sampler=learned`: a trained policy network decides which masked positions to unmask.

Per step the policy reads, for the whole canvas, the dLLM's per-position features (confidence;
optionally margin and entropy), the mask bits and the time t = NFE / L, and gives each position
an unmask probability s = min(1, beta * sigmoid(b / policy_temperature)). Only the current
block's masked positions are decided (the engine enforces this anyway).

Modes: `bernoulli` draws every position independently (training); `bernoulli-argmax` (serving
default) commits the most probable position when the draw is empty.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from sampler_plugins.base import Sampler, SamplerParams, StepView, counter_uniform
from sampler_plugins.policy_net import bernoulli_log_prob, unmask_probs
from sampler_plugins.policy_store import STORE, device_of


class LearnedParams(SamplerParams):
    policy: str | None = Field(None, validate_default=True,
                               description="policy name; default: the one trained for the "
                                           "request's block length")
    mode: Literal["bernoulli", "bernoulli-argmax"] = "bernoulli-argmax"
    policy_temperature: float = Field(1.0, gt=0.0, le=100.0, description="tau_pi")
    beta: float = Field(1.0, gt=0.0, le=1000.0, description="s -> min(1, beta * s)")

    @field_validator("policy")
    @classmethod
    def _known(cls, name: str | None) -> str | None:
        if name is not None and name not in STORE.policies:
            raise ValueError(f"unknown policy {name!r}; loaded: {sorted(STORE.policies)}")
        if name is None and not STORE.policies:
            raise ValueError("no learned policy is loaded (start with --policies DIR)")
        return name


def policy_features(view: StepView, names: tuple[str, ...]) -> torch.Tensor:
    table = {"confidence": view.prob, "margin": view.top1 - view.top2, "entropy": view.entropy}
    return torch.stack([table[n].float() for n in names], -1)


class Learned(Sampler):
    name = "learned"
    Params = LearnedParams
    full_canvas = True  # the policy sees every position's confidence

    @classmethod
    def finalize(cls, params: LearnedParams, gen_length: int, block_length: int) -> LearnedParams:
        if params.policy is not None:
            return params
        return params.model_copy(update={"policy": STORE.default_for(block_length)})

    def __init__(self, params, device):
        super().__init__(params, device)
        self.policy_names = [p.policy for p in params]
        self.tau = self.param_tensor("policy_temperature")
        self.beta = self.param_tensor("beta")
        self.argmax = torch.tensor([p.mode == "bernoulli-argmax" for p in params], device=device)

    def select(self, view: StepView) -> torch.Tensor:
        commit = torch.zeros_like(view.candidate)
        for name in dict.fromkeys(self.policy_names):
            rows = [i for i, n in enumerate(self.policy_names) if n == name]
            idx = torch.tensor(rows, device=view.prob.device)
            policy = STORE.policies[name]
            commit[idx] = self._decide(policy, view, idx, rows)
        return commit

    @torch.no_grad()
    def _decide(self, policy, view: StepView, idx: torch.Tensor, rows: list[int]) -> torch.Tensor:
        net = policy.net
        dev = device_of(net)
        feats = policy_features(view, net.features)[idx].to(dev)
        mask_bits, valid = view.masked[idx].to(dev), view.valid[idx].to(dev)
        t = (view.nfe[idx].float() / view.gen_length[idx].float()).to(dev)
        logits = net(feats, mask_bits, t, valid).to(view.prob.device)
        s = unmask_probs(logits, self.tau[idx], self.beta[idx])
        decide = view.candidate[idx]
        u = counter_uniform(view.rng_keys[idx] ^ 0x5DEECE66D, s.shape[-1]).to(s.dtype)
        action = (u < s) & decide
        empty = ~action.any(-1, keepdim=True) & self.argmax[idx][:, None]
        best = s.masked_fill(~decide, -1.0).argmax(-1, keepdim=True)
        action = action | (empty & torch.zeros_like(action).scatter(-1, best, True) & decide)
        if policy.record:
            logp = bernoulli_log_prob(s, action, decide)
            for j, row in enumerate(rows):
                view.states[row].setdefault("steps", []).append({
                    "feats": feats[j], "mask_bits": mask_bits[j], "t": t[j], "valid": valid[j],
                    "decide": decide[j], "action": action[j], "logp": logp[j]})
        return action
