"""PyTorch reference for the per-step confidence statistics (the CPU path).

For each row x of logits [N, V] (after setting the excluded token to -inf):
  token   argmax(x) if T <= 0, else argmax(x / T + g) with Gumbel noise g (see below)
  prob    softmax(x)[token]      (UN-tempered, as LLaDA / Fast-dLLM use it)
  top1    largest softmax(x) probability
  top2    second largest (0 if V == 1 or only one finite entry)
  entropy -sum p log p of softmax(x), nats, with 0 log 0 = 0
Ties go to the lowest index. A row with no finite entry gives token 0 and NaN statistics.
Logits must be finite or -inf (+inf and NaN are not supported).

Gumbel noise: the ONE definition both paths implement (torch here, Triton in
triton_confidence.py), so a seed gives the same token on either path and whatever other
rows share the batch. All arithmetic is on uint32 (here int64 masked to 32 bits):
  fmix32(h): h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16
  key   = fmix32(lo(seed) ^ fmix32(hi(seed) ^ 0x9E3779B9))   lo/hi = low/high 32 bits
  h     = fmix32(key ^ (v * 0x9E3779B9))                     v = vocabulary index
  u     = ((h >> 9) + 0.5) * 2^-23    the high 23 bits, centred in their bin: u lies in
                                      [2^-24, 1 - 2^-24] and is exact in fp32 and fp64
  g     = -log(-log(u))               so g <= 16.64 (the Triton kernel relies on that bound)
"""
from __future__ import annotations

from typing import NamedTuple

import torch

M32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9
CHUNK_BYTES = 256 * 2**20  # largest float64 [rows, V] tile the reference materialises


class ConfidenceStats(NamedTuple):
    token: torch.Tensor    # int64 [N]
    prob: torch.Tensor     # float32 [N]
    top1: torch.Tensor     # float32 [N]
    top2: torch.Tensor     # float32 [N]
    entropy: torch.Tensor  # float32 [N]


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's finaliser on int64 tensors holding uint32 values (multiplies wrap, then mask)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def row_key(seeds: torch.Tensor) -> torch.Tensor:
    seeds = seeds.to(torch.int64)
    return fmix32((seeds & M32) ^ fmix32(((seeds >> 32) & M32) ^ GOLDEN))


def gumbel_noise(seeds: torch.Tensor, vocab: int) -> torch.Tensor:
    """float64 [n, vocab] Gumbel noise g[i, v] for the rows keyed by seeds [n]."""
    v = torch.arange(vocab, dtype=torch.int64, device=seeds.device)
    h = fmix32(row_key(seeds)[:, None] ^ ((v * GOLDEN) & M32))
    u = ((h >> 9).double() + 0.5) * 2.0**-23
    return -torch.log(-torch.log(u))


def empty_stats(n: int, device: torch.device) -> ConfidenceStats:
    f = torch.empty(n, dtype=torch.float32, device=device)
    return ConfidenceStats(torch.empty(n, dtype=torch.int64, device=device), f, f.clone(),
                           f.clone(), f.clone())


def confidence_stats_torch(logits: torch.Tensor, temperature: torch.Tensor | None,
                           seeds: torch.Tensor | None,
                           exclude_token_id: int | None) -> ConfidenceStats:
    """temperature: float [N] or None (greedy); seeds: int64 [N], needed if temperature is set."""
    n, vocab = logits.shape
    out = empty_stats(n, logits.device)
    chunk = max(1, CHUNK_BYTES // (vocab * 8))
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        x = logits[r0:r1].double()
        if exclude_token_id is not None:  # out of place: .double() may alias fp64 input
            x = x.index_fill(1, torch.tensor([exclude_token_id], device=x.device), float("-inf"))
        m = x.amax(dim=1, keepdim=True)
        m_safe = torch.where(m == float("-inf"), 0.0, m)  # all -inf row: avoid -inf - -inf
        xc = x - m_safe
        e = xc.exp()
        z = e.sum(dim=1, keepdim=True)
        p = e / z
        # -sum p log p = log z - sum(p * xc); -inf entries have p = 0 and contribute 0.
        entropy = z.log().squeeze(1) - torch.where(e > 0, p * xc, 0.0).sum(dim=1)
        token = x.argmax(dim=1)
        if temperature is not None:
            t = temperature[r0:r1].double()
            sample = t > 0
            keys = x / torch.where(sample, t, 1.0)[:, None] + gumbel_noise(seeds[r0:r1], vocab)
            token = torch.where(sample, keys.argmax(dim=1), token)
        top = p.topk(min(2, vocab), dim=1).values
        top2 = top[:, 1] if vocab > 1 else torch.zeros_like(top[:, 0])
        empty = m.squeeze(1) == float("-inf")
        nan = torch.full_like(entropy, float("nan"))
        out.token[r0:r1] = torch.where(empty, 0, token)
        out.prob[r0:r1] = torch.where(empty, nan, p.gather(1, token[:, None]).squeeze(1))
        out.top1[r0:r1] = torch.where(empty, nan, top[:, 0])
        out.top2[r0:r1] = torch.where(empty, nan, top2)
        out.entropy[r0:r1] = torch.where(empty, nan, entropy)
    return out
