"""`sampler=learned`: a trained policy network decides which masked positions to unmask.

Per step the policy reads, for the whole canvas, the dLLM's per-position features (confidence;
optionally margin and entropy), the mask bits and the time t = NFE / L, and gives each position
an unmask probability s = min(1, beta * sigmoid(b / policy_temperature)). Only the current
block's masked positions are decided (the engine enforces this anyway).

Modes: `bernoulli` draws every position independently (training); `bernoulli-argmax` (serving
default) commits the most probable position when the draw is empty. A policy trained for another
dLLM runs only when the request says `allow_other_model: true` (the paper's LLaDA-to-Dream
transfer); the server logs it once per policy and the response's resolved params show it.
The trainer's expert steering runs rollouts whose commits follow Fast-dLLM's threshold rule (a
policy with `expert_threshold` set) while recording the network's likelihood of them.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from unmaskd.kernels import FEATURE_STATS, policy_features
from unmaskd.sampler_plugins.base import Sampler, SamplerParams, StepView, counter_uniform
from unmaskd.sampler_plugins.policy_net import PolicyStep, bernoulli_log_prob, unmask_probs
from unmaskd.sampler_plugins.policy_store import STORE, device_of

log = logging.getLogger(__name__)
_RECORD = "policy_steps"  # a recording policy's PolicySteps in the sequence's sampler state
_warned: set[str] = set()  # policies already logged as used on another dLLM


class LearnedParams(SamplerParams):
    # before `policy`, whose check reads it
    allow_other_model: bool = Field(False, description="use a policy trained for another dLLM "
                                                       "(its fingerprint check is skipped)")
    policy: str | None = Field(None, validate_default=True,
                               description="policy name; default: the one trained for the "
                                           "request's block length")
    mode: Literal["bernoulli", "bernoulli-argmax"] = "bernoulli-argmax"
    # 0.25, not the paper's 1: on the validation split a cooler policy commits the positions
    # it is sure of and leaves the rest, instead of drawing them at random (docs/BENCHMARKS.md);
    # a policy's own policy.json may name another (finalize)
    policy_temperature: float = Field(0.25, gt=0.0, le=100.0, description="tau_pi")
    beta: float = Field(1.0, gt=0.0, le=1000.0, description="s -> min(1, beta * s)")

    @field_validator("policy")
    @classmethod
    def _known(cls, name: str | None, info: ValidationInfo) -> str | None:
        allow = info.data.get("allow_other_model", False)
        if name is not None and allow and name in STORE.other_model:
            return name
        if name is not None and name in STORE.skipped:
            hint = ("; sampler_params.allow_other_model=true uses it anyway"
                    if name in STORE.other_model else "")
            raise ValueError(f"policy {name!r} was not loaded: {STORE.skipped[name]}{hint}; "
                             f"loaded: {sorted(STORE.policies)}")
        if name is not None and name not in STORE.policies:
            raise ValueError(f"unknown policy {name!r}; loaded: {sorted(STORE.policies)}")
        if name is None and not STORE.policies and allow and STORE.other_model:
            return name
        if name is None and not STORE.policies and STORE.skipped:
            first, why = min(STORE.skipped.items())
            raise ValueError(f"no learned policy is loaded ({len(STORE.skipped)} skipped at "
                             f"load; {first!r}: {why})")
        if name is None and not STORE.policies:
            raise ValueError("no learned policy is loaded (start with --policies DIR)")
        return name


class Learned(Sampler):
    name = "learned"
    Params = LearnedParams
    full_canvas = True  # the policy sees every position's confidence

    @classmethod
    def finalize(cls, params: LearnedParams, gen_length: int, block_length: int) -> LearnedParams:
        if params.policy is None:
            params = params.model_copy(update={"policy": STORE.default_for(
                block_length, params.allow_other_model)})
        # A policy may record the temperature it is served at (policy.json), used when the
        # request names none: a full-diffusion policy trained at 1.0 commits about one position
        # per step at the generic 0.25.
        served = STORE.get(params.policy).meta.get("policy_temperature")
        if served is not None and "policy_temperature" not in params.model_fields_set:
            params = params.model_copy(update={"policy_temperature": float(served)})
        if params.policy not in STORE.policies and params.policy not in _warned:
            _warned.add(params.policy)
            log.warning("policy %r is used on another dLLM than it was trained for, as a request "
                        "asked (allow_other_model): %s", params.policy,
                        STORE.skipped.get(params.policy))
        return params

    @classmethod
    def warnings(cls, params: LearnedParams, gen_length: int, block_length: int) -> list[str]:
        """A policy used outside the block setting it was trained in (full diffusion for
        blocks, or blocks of another length) runs, as asked: docs/BENCHMARKS.md measures
        full48-a1 in blocks of 12 (89.0% at 5.0 NFE on validation), the start of the block
        recipe. But it is off the setting it learned, so the response says so."""
        policy = STORE.policies.get(params.policy) or STORE.other_model.get(params.policy)
        if policy is None or "gen_length" not in policy.meta:  # no record of its canvas
            return []
        trained = _setting(policy.block_length, int(policy.meta["gen_length"]))
        here = _setting(block_length, gen_length)
        if trained == here:
            return []
        return [f"policy: {params.policy!r} was trained for {trained} and decodes here "
                f"in {here}, outside the setting it learned"]

    def __init__(self, params, device):
        super().__init__(params, device)
        names = [p.policy for p in params]
        # (policy, its rows, the same as an index tensor): built once per batch membership
        self.by_policy = []
        for name in dict.fromkeys(names):
            rows = [i for i, n in enumerate(names) if n == name]
            self.by_policy.append((name, rows, torch.tensor(rows, device=device)))
        self.tau = self.param_tensor("policy_temperature")
        self.beta = self.param_tensor("beta")
        self.argmax = torch.tensor([p.mode == "bernoulli-argmax" for p in params], device=device)
        # the statistics this group's policies read (prob too: expert steering ranks by it)
        features = {f for name, _, _ in self.by_policy for f in STORE.get(name).net.features}
        self.stats = frozenset({"prob"}).union(*(FEATURE_STATS[f] for f in features))

    def policy_input(self):
        """Let the confidence kernel compute the input layer when every row uses one policy
        (the trainer's recording rollouts keep the raw features for the loss instead)."""
        if len(self.by_policy) != 1:
            return None
        policy = STORE.get(self.by_policy[0][0])
        if policy.record or policy.expert_threshold is not None:
            return None
        return policy.net.input.weight, policy.net.input.bias, policy.net.features

    def select(self, view: StepView) -> torch.Tensor:
        commit = torch.zeros_like(view.candidate)
        for name, rows, idx in self.by_policy:
            commit[idx] = self._decide(STORE.get(name), view, idx, rows)
        return commit

    @torch.no_grad()
    def _decide(self, policy, view: StepView, idx: torch.Tensor, rows: list[int]) -> torch.Tensor:
        net = policy.net
        dev = device_of(net)
        mask_bits, valid = view.masked[idx].to(dev), view.valid[idx].to(dev)
        t = (view.nfe[idx].float() / view.gen_length[idx].float()).to(dev)
        if view.embedding is not None:  # the kernel already applied net.input
            logits = net.forward_embedded(view.embedding[idx].to(dev), mask_bits, t, valid)
        else:
            feats = policy_features(view, net.features)[idx].to(dev)
            logits = net(feats, mask_bits, t, valid)
        logits = logits.to(view.prob.device)
        s = unmask_probs(logits, self.tau[idx], self.beta[idx])
        decide = view.candidate[idx]
        if policy.expert_threshold is None:
            u = counter_uniform(view.rng_keys[idx] ^ 0x5DEECE66D, s.shape[-1]).to(s.dtype)
            action = (u < s) & decide
            fallback, score = self.argmax[idx][:, None], s
        else:  # expert steering: Fast-dLLM's rule picks, the network only scores the pick
            conf = view.prob[idx]
            action = (conf >= policy.expert_threshold) & decide
            fallback, score = torch.ones_like(action[:, :1]), conf
        empty = ~action.any(-1, keepdim=True) & fallback
        best = score.masked_fill(~decide, -1.0).argmax(-1, keepdim=True)
        action = action | (empty & torch.zeros_like(action).scatter(-1, best, True) & decide)
        if policy.record:
            logp = bernoulli_log_prob(s, action, decide)
            expert = torch.tensor(policy.expert_threshold is not None, device=dev)
            for j, row in enumerate(rows):
                view.states[row].setdefault(_RECORD, []).append(PolicyStep(
                    feats[j], mask_bits[j], t[j], valid[j], decide[j], action[j], logp[j],
                    expert))
        return action


def recorded_steps(sampler_state: dict) -> list[PolicyStep]:
    """A finished rollout's training record (its SequenceResult.sampler_state), one PolicyStep
    per step; empty unless its policy records."""
    return sampler_state.get(_RECORD, [])


def _setting(block_length: int, gen_length: int) -> str:
    """A decoding setting in words: full diffusion (one block over the canvas) or blocks of N."""
    return "full diffusion" if block_length >= gen_length else f"blocks of {block_length}"
