"""Learned policies as files, and the in-process store the `learned` sampler reads from.

A policy is a folder: `policy.safetensors` (weights) + `policy.json` (architecture, features, the
dLLM it was trained for, block length, alpha, training data and command). Nothing is unpickled.
A policy whose weights file is not the one policy.json records (SHA-256), or whose weights do
not match its architecture, is refused. One trained for another dLLM is refused too, unless a
request asks for it explicitly (`allow_other_model`: the paper's transfer of a policy from
LLaDA to Dream); such policies are kept aside, fully checked, in `PolicyStore.other_model`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from unmaskd.sampler_plugins.policy_net import PolicyNet

log = logging.getLogger(__name__)
RACY_NS = 2_000_000_000  # files changed less than this long ago are hashed but not cached


class PolicyError(ValueError):
    """A policy file is unreadable, malformed, or made for another model."""


class OtherModelError(PolicyError):
    """The policy is sound but was trained for another dLLM (its fingerprint differs)."""


def cache_dir() -> Path:
    """Where weight digests are cached: $UNMASKD_CACHE_DIR, else the user's cache folder (never
    the model folder, which may be read-only or shared)."""
    if os.environ.get("UNMASKD_CACHE_DIR"):
        return Path(os.environ["UNMASKD_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unmaskd"


def _read_digest_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_digest_cache(path: Path, cache: dict) -> None:
    """Atomically (servers and torchrun ranks may start together); entries of deleted files go.
    Not writable: no cache, every start hashes again."""
    cache = {k: v for k, v in cache.items() if os.path.exists(k)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot cache weight digests in %s (%s); the next start hashes again",
                    path, e)


def file_sha256(path: Path, cache: dict) -> str:
    """SHA-256 of a whole file, reused from `cache` while its size, mtime and ctime are those it
    was hashed at (ctime too: tools that restore an mtime cannot restore it)."""
    st = path.stat()  # before reading: a write during hashing leaves a stale stamp, not a hit
    key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("stamp") == stamp:
        return hit["sha256"]
    if st.st_size > 1 << 30:
        log.info("hashing %s (%.1f GB) for the model fingerprint", path, st.st_size / 1e9)
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    # Timestamps tick coarsely (ms on ext4): a file changed within a tick of being hashed would
    # keep its stamp, so (as git does) a file changed in the last seconds is not cached.
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
        cache[key] = {"stamp": stamp, "sha256": digest}
    return digest


def model_fingerprint(model_dir: str | Path) -> str:
    """Identifies a dLLM checkpoint: its config plus the SHA-256 of every weight file, all of it
    (a fingerprint of the first MiBs let a checkpoint corrupted further on pass for the one the
    policies were trained for). Hashing runs at ~1.5 GB/s (16 GB: over 10 s), so the digests
    are cached across processes in cache_dir(), keyed by path, size, mtime and ctime."""
    model_dir = Path(model_dir)
    h = hashlib.sha256(json.dumps(json.loads((model_dir / "config.json").read_text()),
                                  sort_keys=True).encode())
    cache_path = cache_dir() / "weight-digests.json"
    cache = _read_digest_cache(cache_path)
    before = dict(cache)
    for path in sorted(model_dir.glob("*.safetensors")):
        h.update(f"{path.name}\0{file_sha256(path, cache)}\n".encode())
    if cache != before:
        _write_digest_cache(cache_path, cache)
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
    """Writes the weights and policy.json, which records their SHA-256: a policy file corrupted
    later is refused at load instead of steering decoding with garbage."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()})
    (out_dir / "policy.safetensors").write_bytes(data)
    meta = {**meta, "architecture": net.architecture(),
            "weights_sha256": hashlib.sha256(data).hexdigest()}
    (out_dir / "policy.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_policy(policy_dir: str | Path, fingerprint: str | None) -> Policy:
    """Refusals name the file inside policy_dir but not the folder (they reach HTTP clients;
    PolicyStore.load_dir logs the folder)."""
    policy_dir = Path(policy_dir)
    try:
        meta = json.loads((policy_dir / "policy.json").read_text())
        arch = meta["architecture"]
        net = PolicyNet(tuple(arch["features"]), arch["width"], arch["heads"], arch["ffn"])
    except OSError as e:
        raise PolicyError(f"policy.json: unreadable ({e.strerror})") from None
    except (KeyError, TypeError, ValueError) as e:  # ValueError: bad JSON, unknown feature
        raise PolicyError(f"policy.json: malformed ({e!r})") from None
    trained_for = meta.get("model", {}).get("fingerprint")
    if fingerprint is not None and trained_for != fingerprint:
        raise OtherModelError(f"trained for dLLM {meta.get('model', {}).get('name')!r} "
                          f"(fingerprint {trained_for}), not the loaded one ({fingerprint}): "
                          "another checkpoint, or its weights changed")
    try:  # read once: the bytes hashed are the bytes loaded
        data = (policy_dir / "policy.safetensors").read_bytes()
    except OSError as e:
        raise PolicyError(f"policy.safetensors: unreadable ({e.strerror})") from None
    recorded = meta.get("weights_sha256")
    if hashlib.sha256(data).hexdigest() != recorded:
        raise PolicyError("policy.safetensors: its SHA-256 is not policy.json's weights_sha256 " + (
            "(the file is corrupted or was replaced)" if recorded else
            "(none recorded: saved before policy files carried one)"))
    try:
        state = load(data)
    except SafetensorError as e:
        raise PolicyError(f"policy.safetensors: unreadable ({e})") from None
    expected = net.state_dict()
    bad = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    if bad or set(state) - set(expected):
        raise PolicyError(f"policy.safetensors: weights do not match the architecture in "
                          f"policy.json (first mismatch: {(bad or ['extra'])[0]})")
    net.load_state_dict(state)
    return Policy(policy_dir.name, net.eval().requires_grad_(False), meta)


class PolicyStore:
    """Named policies available to the `learned` sampler in this process."""

    def __init__(self) -> None:
        self.policies: dict[str, Policy] = {}
        # name -> why load_dir refused it, so "unknown policy" can say why (422, GET /samplers)
        self.skipped: dict[str, str] = {}
        # refused only for being trained for another dLLM: usable when a request insists
        self.other_model: dict[str, Policy] = {}

    def add(self, policy: Policy) -> None:
        self.policies[policy.name] = policy
        self.skipped.pop(policy.name, None)
        self.other_model.pop(policy.name, None)

    def remove(self, name: str) -> None:
        self.policies.pop(name, None)
        self.other_model.pop(name, None)

    def get(self, name: str) -> Policy:
        """A loaded policy, or one trained for another dLLM (a request allowed it)."""
        return self.policies[name] if name in self.policies else self.other_model[name]

    def load_dir(self, root: str | Path, fingerprint: str | None) -> list[str]:
        """Load every policy folder under root; a bad one is logged and skipped."""
        loaded = []
        for path in sorted(Path(root).glob("*/policy.json")):
            name = path.parent.name
            try:
                self.add(load_policy(path.parent, fingerprint))
                loaded.append(name)
                continue
            except OtherModelError as e:
                why = str(e)
                try:  # every other check still applies
                    self.other_model[name] = load_policy(path.parent, None)
                except PolicyError as worse:
                    why = str(worse)
            except PolicyError as e:
                why = str(e)
            log.error("skipping policy %s: %s", path.parent, why)
            self.skipped[name] = why
        return loaded

    def default_for(self, block_length: int, other_model: bool = False) -> str | None:
        """The policy for a request's block mode: closest block length, then the default alpha
        (policies marked `"default": true` in policy.json first, then the lower alpha). With
        `other_model`, policies trained for another dLLM count when none is this one's."""
        pool = self.policies or (self.other_model if other_model else {})
        if not pool:
            return None
        best = min(pool.values(), key=lambda p: (
            abs(p.block_length - block_length), not p.meta.get("default", False),
            p.meta.get("alpha", 0.0), p.name))
        return best.name

    def describe(self) -> list[dict]:
        return [{"name": p.name, **{k: v for k, v in p.meta.items() if k != "architecture"},
                 "architecture": p.meta.get("architecture")} for p in self.policies.values()]


STORE = PolicyStore()  # the process-wide store the server, the CLI and the trainer fill


def device_of(net: PolicyNet) -> torch.device:
    return next(net.parameters()).device
