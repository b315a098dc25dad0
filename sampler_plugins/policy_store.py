"""Learned policies as files, and the in-process store the `learned` sampler reads from.

A policy is a folder: `policy.safetensors` (weights) + `policy.json` (architecture, features, the
dLLM it was trained for, block length, alpha, training data and command). Nothing is unpickled.
A policy trained for another dLLM, or whose weights do not match its architecture, is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from unmaskd.sampler_plugins.policy_net import PolicyNet

log = logging.getLogger(__name__)


class PolicyError(ValueError):
    """A policy file is unreadable, malformed, or made for another model."""


def model_fingerprint(model_dir: str | Path) -> str:
    """Identifies a dLLM checkpoint cheaply: its config plus the size and first 4 MiB of every
    weight file (hashing all of an 8B model's weights would take minutes)."""
    model_dir = Path(model_dir)
    h = hashlib.sha256(json.dumps(json.loads((model_dir / "config.json").read_text()),
                                  sort_keys=True).encode())
    for path in sorted(model_dir.glob("*.safetensors")):
        h.update(path.name.encode() + str(path.stat().st_size).encode())
        with path.open("rb") as f:
            h.update(f.read(4 << 20))
    return h.hexdigest()[:16]


@dataclass
class Policy:
    name: str
    net: PolicyNet
    meta: dict
    record: bool = False  # trainer only: keep per-step inputs and actions for the GRPO loss
    # Trainer only (expert steering): commit by Fast-dLLM's threshold rule at this confidence
    # instead of the network's draw; the network's log-likelihood of that commit is recorded.
    expert_threshold: float | None = None

    @property
    def block_length(self) -> int:
        return int(self.meta["block_length"])


def save_policy(net: PolicyNet, out_dir: str | Path, meta: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out_dir / "policy.safetensors"))
    meta = {**meta, "architecture": net.architecture()}
    (out_dir / "policy.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_policy(policy_dir: str | Path, fingerprint: str | None) -> Policy:
    policy_dir = Path(policy_dir)
    try:
        meta = json.loads((policy_dir / "policy.json").read_text())
        arch = meta["architecture"]
        net = PolicyNet(tuple(arch["features"]), arch["width"], arch["heads"], arch["ffn"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise PolicyError(f"{policy_dir}/policy.json: unreadable or malformed ({e})") from None
    trained_for = meta.get("model", {}).get("fingerprint")
    if fingerprint is not None and trained_for != fingerprint:
        raise PolicyError(f"{policy_dir}: trained for dLLM {meta.get('model', {}).get('name')!r} "
                          f"(fingerprint {trained_for}), not the loaded one ({fingerprint})")
    try:
        state = load_file(str(policy_dir / "policy.safetensors"))
    except (SafetensorError, OSError) as e:
        raise PolicyError(f"{policy_dir}/policy.safetensors: unreadable ({e})") from None
    expected = net.state_dict()
    bad = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    if bad or set(state) - set(expected):
        raise PolicyError(f"{policy_dir}/policy.safetensors: weights do not match the "
                          f"architecture in policy.json (first mismatch: {(bad or ['extra'])[0]})")
    net.load_state_dict(state)
    return Policy(policy_dir.name, net.eval().requires_grad_(False), meta)


class PolicyStore:
    """Named policies available to the `learned` sampler in this process."""

    def __init__(self) -> None:
        self.policies: dict[str, Policy] = {}

    def add(self, policy: Policy) -> None:
        self.policies[policy.name] = policy

    def remove(self, name: str) -> None:
        self.policies.pop(name, None)

    def load_dir(self, root: str | Path, fingerprint: str | None) -> list[str]:
        """Load every policy folder under root; a bad one is logged and skipped."""
        loaded = []
        for path in sorted(Path(root).glob("*/policy.json")):
            try:
                self.add(load_policy(path.parent, fingerprint))
                loaded.append(path.parent.name)
            except PolicyError as e:
                log.error("skipping policy: %s", e)
        return loaded

    def default_for(self, block_length: int) -> str | None:
        """The policy for a request's block mode: closest block length, then the default alpha
        (policies marked `"default": true` in policy.json first, then the lower alpha)."""
        if not self.policies:
            return None
        best = min(self.policies.values(), key=lambda p: (
            abs(p.block_length - block_length), not p.meta.get("default", False),
            p.meta.get("alpha", 0.0), p.name))
        return best.name

    def describe(self) -> list[dict]:
        return [{"name": p.name, **{k: v for k, v in p.meta.items() if k != "architecture"},
                 "architecture": p.meta.get("architecture")} for p in self.policies.values()]


STORE = PolicyStore()  # the process-wide store the server, the CLI and the trainer fill


def device_of(net: PolicyNet) -> torch.device:
    return next(net.parameters()).device
