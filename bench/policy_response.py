"""What a learned policy does with confidence: its unmask probability per confidence level.

    python bench/policy_response.py dllm/embedded/policies/block12-a03 runs/policy-x/policy

A synthetic canvas of 48 masked positions whose confidences cycle through the levels below, at
t = 0.1 (early in decoding), with margin and entropy filled in as for a two-way split of the
rest of the mass when the policy reads them. A policy that unmasks by confidence shows a step
from ~0 to ~1; a collapsed one shows a flat row (every position alike), which at the serving
temperature commits whole blocks or nothing.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch
from unmaskd.kernels import policy_features
from unmaskd.sampler_plugins.policy_net import unmask_probs
from unmaskd.sampler_plugins.policy_store import load_policy

LEVELS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.99)
L = 48


def response(policy_dir: str, tau: float) -> list[float]:
    net = load_policy(policy_dir, None).net
    conf = torch.tensor(LEVELS).repeat(L // len(LEVELS))
    rest = (1 - conf) / 2  # the second token's probability; the remaining mass on a third
    stats = SimpleNamespace(prob=conf, top1=conf, top2=rest,
                            entropy=-(conf * conf.log() + 2 * rest * rest.clamp_min(1e-12).log()))
    feats = policy_features(stats, net.features)[None]
    masked = torch.ones(1, L, dtype=torch.bool)
    with torch.no_grad():
        s = unmask_probs(net(feats, masked, torch.tensor([0.1]), masked), tau)
    return s[0, :len(LEVELS)].tolist()


def main() -> None:
    print("| policy | tau | " + " | ".join(f"c={c}" for c in LEVELS) + " |")
    print("|---|---|" + "---|" * len(LEVELS))
    for policy_dir in sys.argv[1:]:
        for tau in (1.0, 0.25):
            row = " | ".join(f"{s:.2f}" for s in response(policy_dir, tau))
            print(f"| {policy_dir} | {tau} | {row} |")


if __name__ == "__main__":
    main()
