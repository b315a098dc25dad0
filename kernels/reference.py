"""PyTorch reference for the per-step confidence statistics (the CPU path).

For each row x of logits [N, V] (after setting the excluded token to -inf):
  token   argmax(x) if T <= 0, else argmax(x / T + g) with Gumbel noise g (see below)
  prob    softmax(x)[token]      (UN-tempered, as LLaDA / Fast-dLLM use it)
  top1    largest softmax(x) probability
  top2    second largest (0 if V == 1 or only one finite entry)
  entropy -sum p log p of softmax(x), nats, with 0 log 0 = 0
Ties go to the lowest index. A row with no finite entry gives token 0 and NaN statistics.
Logits must be finite or -inf (+inf and NaN are not supported).

Optional policy input embedding (policy_input=(weight [width, F], bias [width] or None,
features)): embedding = F.linear(feats, weight, bias), fp32 [N, width], where feats [N, F]
stacks, in the order of `features`, confidence = prob, margin = top1 - top2, entropy = entropy
(the fp32 statistics above; the learned policy's first layer, sampler_plugins/learned.py).

Gumbel noise: the ONE definition both paths implement (torch here, Triton in
triton_confidence.py), so a seed gives the same token on either path and whatever other
rows share the batch. All arithmetic is on uint32 (here int64 masked to 32 bits; fmix32 and
row_key are in rng.py):
  fmix32(h): h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16
  key   = fmix32(lo(seed) ^ fmix32(hi(seed) ^ 0x9E3779B9))   lo/hi = low/high 32 bits
  h     = fmix32(key ^ (v * 0x9E3779B9))                     v = vocabulary index
  u     = ((h >> 9) + 0.5) * 2^-23    the high 23 bits, centred in their bin: u lies in
                                      [2^-24, 1 - 2^-24] and is exact in fp32 and fp64
  g     = -log(-log(u))               so g <= 16.64 (the Triton kernel relies on that bound)
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .rng import GOLDEN, M32, fmix32, row_key

CHUNK_BYTES = 256 * 2**20  # largest float64 [rows, V] tile the reference materialises


class ConfidenceStats(NamedTuple):
    token: torch.Tensor    # int64 [N]
    prob: torch.Tensor     # float32 [N]
    top1: torch.Tensor     # float32 [N]
    top2: torch.Tensor     # float32 [N]
    entropy: torch.Tensor  # float32 [N]
    embedding: torch.Tensor | None = None  # float32 [N, width], only if policy_input is given


POLICY_FEATURES = ("confidence", "margin", "entropy")  # the names a policy_input may use
STAT_FIELDS = ("prob", "top1", "top2", "entropy")  # the statistics per position
FEATURE_STATS = {"confidence": {"prob"}, "margin": {"top1", "top2"}, "entropy": {"entropy"}}
PolicyInput = tuple[torch.Tensor, torch.Tensor | None, Sequence[str]]


def check_policy_input(policy_input: PolicyInput, device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Validate (weight [width, F], bias [width] or None, features); return them as contiguous
    float32 tensors on `device` (a zero bias if None) and a tuple of feature names."""
    try:
        weight, bias, features = policy_input
    except (TypeError, ValueError) as err:
        raise ValueError("policy_input must be (weight, bias, features)") from err
    features = (features,) if isinstance(features, str) else tuple(features)
    if not features or any(f not in POLICY_FEATURES for f in features):
        raise ValueError(f"policy_input features must be names from {POLICY_FEATURES}, "
                         f"got {features}")
    if (not isinstance(weight, torch.Tensor) or weight.dim() != 2
            or weight.shape[1] != len(features) or weight.shape[0] == 0):
        raise ValueError(f"policy_input weight must be [width, {len(features)}] for features "
                         f"{features}, got {getattr(weight, 'shape', type(weight))}")
    width = weight.shape[0]
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (width,)):
        raise ValueError(f"policy_input bias must be None or [{width}], "
                         f"got {getattr(bias, 'shape', type(bias))}")
    weight = weight.detach().to(device=device, dtype=torch.float32).contiguous()
    bias = (torch.zeros(width, device=device) if bias is None
            else bias.detach().to(device=device, dtype=torch.float32).contiguous())
    return weight, bias, features


def policy_embedding(stats: ConfidenceStats, weight: torch.Tensor, bias: torch.Tensor,
                     features: Sequence[str]) -> torch.Tensor:
    """The reference embedding: F.linear over the stacked fp32 features."""
    return F.linear(policy_features(stats, features), weight, bias)


def policy_features(stats, names: Sequence[str]) -> torch.Tensor:
    """The learned policy's inputs, stacked fp32 [..., F], from anything with the statistics'
    fields (ConfidenceStats, or the engine's per-position StepView grids)."""
    table = {"confidence": lambda: stats.prob, "margin": lambda: stats.top1 - stats.top2,
             "entropy": lambda: stats.entropy}
    return torch.stack([table[n]().float() for n in names], -1)


def gumbel_noise(seeds: torch.Tensor, vocab: int) -> torch.Tensor:
    """float64 [n, vocab] Gumbel noise g[i, v] for the rows keyed by seeds [n]."""
    v = torch.arange(vocab, dtype=torch.int64, device=seeds.device)
    h = fmix32(row_key(seeds)[:, None] ^ ((v * GOLDEN) & M32))
    u = ((h >> 9).double() + 0.5) * 2.0**-23
    return -torch.log(-torch.log(u))


def empty_stats(n: int, device: torch.device, width: int | None = None) -> ConfidenceStats:
    """Uninitialised outputs; with width, also an fp32 [n, width] embedding."""
    f = torch.empty(n, dtype=torch.float32, device=device)
    emb = None if width is None else torch.empty(n, width, dtype=torch.float32, device=device)
    return ConfidenceStats(torch.empty(n, dtype=torch.int64, device=device), f, f.clone(),
                           f.clone(), f.clone(), emb)


def confidence_stats_torch(logits: torch.Tensor, temperature: torch.Tensor | None,
                           seeds: torch.Tensor | None,
                           exclude_token_id: int | None,
                           policy_input: PolicyInput | None = None,
                           fields: Collection[str] = STAT_FIELDS) -> ConfidenceStats:
    """temperature: float [N] or None (greedy); seeds: int64 [N], needed if temperature is set;
    policy_input: (weight, bias, features) to also return the policy's input embedding;
    fields: the statistics wanted besides token, prob and top1 (which cost nothing extra):
    top2 and entropy each take passes over the vocabulary, and are NaN when not asked for.
    On a CPU these passes are most of a decoding step's work outside the forward."""
    n, vocab = logits.shape
    if policy_input is not None:  # the embedding reads its features' statistics
        policy_input = check_policy_input(policy_input, logits.device)
        fields = set(fields).union(*(FEATURE_STATS[f] for f in policy_input[2]))
    chunk = max(1, CHUNK_BYTES // (vocab * 8))
    parts = [_stats_of_rows(logits[r0:r0 + chunk],
                            None if temperature is None else temperature[r0:r0 + chunk],
                            None if seeds is None else seeds[r0:r0 + chunk],
                            exclude_token_id, "top2" in fields, "entropy" in fields)
             for r0 in range(0, max(n, 1), chunk)]  # n = 0: one empty chunk
    out = ConfidenceStats(*(torch.cat(column) if len(parts) > 1 else column[0]
                            for column in zip(*parts)))
    if policy_input is not None:
        weight, bias, features = policy_input
        out = out._replace(embedding=policy_embedding(out, weight, bias, features))
    return out


def _stats_of_rows(logits: torch.Tensor, temperature: torch.Tensor | None,
                   seeds: torch.Tensor | None, exclude_token_id: int | None, want_top2: bool,
                   want_entropy: bool) -> tuple[torch.Tensor, ...]:
    """(token, prob, top1, top2, entropy) of a chunk of rows, all in float64 arithmetic."""
    vocab = logits.shape[1]
    x = logits.double()
    if x.data_ptr() == logits.data_ptr():  # fp64 input: .double() aliases it
        x = x.clone()
    if exclude_token_id is not None:
        x[:, exclude_token_id] = float("-inf")
    m, token = x.max(dim=1, keepdim=True)  # the first maximal index, as argmax gives
    token = token.squeeze(1)
    empty = m.squeeze(1) == float("-inf")
    # A row with no finite entry is rare: on a CPU one read says whether to mend it; on a
    # device (UNMASKD_KERNEL=torch) the mending always runs rather than sync every step.
    any_empty = logits.device.type != "cpu" or bool(empty.any())
    if any_empty:
        m.masked_fill_(m == float("-inf"), 0.0)  # avoid -inf - -inf
    if temperature is not None:
        sample = temperature.double() > 0
        keys = x / torch.where(sample, temperature.double(), 1.0)[:, None] + gumbel_noise(
            seeds, vocab)
        token = torch.where(sample, keys.argmax(dim=1), token)
    xc = x.sub_(m)
    e = xc.exp()
    z = e.sum(dim=1)
    # softmax(x)[i] = e[i] / z: the same fp64 arithmetic as a full softmax, for the few
    # entries read; the largest is exp(0) / z
    prob = e.gather(1, token[:, None]).squeeze(1) / z
    top1 = 1.0 / z
    top2 = entropy = torch.full_like(z, float("nan"))
    if want_top2 and vocab > 1:
        top2 = e.gather(1, x.topk(2, dim=1).indices[:, 1:]).squeeze(1) / z
    elif want_top2:
        top2 = torch.zeros_like(z)
    if want_entropy:
        # -sum p log p = log z - sum(p * xc); -inf entries have p = 0 and contribute 0.
        p = e / z[:, None]
        entropy = z.log() - torch.where(e > 0, p * xc, 0.0).sum(dim=1)
    stats = [prob, top1, top2, entropy]
    if any_empty:  # token 0 and NaN statistics
        token = token.masked_fill(empty, 0)
        stats = [s.masked_fill(empty, float("nan")) for s in stats]
    return token, *(s.float() for s in stats)
