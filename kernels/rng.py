"""The project's counter-based hashing: every random draw in decoding comes from here.

No generator state: a draw is a hash of (request seed, step, position or token), so a request
gives the same tokens alone or in any batch. Two primitives, with different jobs:

  mix(a, b)            64-bit key combiner (int64, wrapping): a * FNV-64 prime ^ b. The engine
                       derives a row's key per step, step_rng_keys(seed, NFE) =
                       mix(mix(seed, NFE), 0x2545F491), and per canvas column for the Gumbel
                       noise, mix(step key, column) (engine/loop.py).
  fmix32(h, shift=13)  murmur3's 32-bit finaliser (int64 tensors holding uint32 values):
                       h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> shift; h *= 0xC2B2AE35;
                       h ^= h >> 16. shift=13 is murmur3's own fmix32: the Gumbel noise
                       (row_key here, reference.py's gumbel_noise and its deliberate Triton
                       copy, triton_confidence.py's _fmix32). shift=16 is the variant the
                       samplers' uniforms have always used (sampler_plugins/base.py:
                       counter_uniform); it stays as it is because its draws decide the tokens of
                       the random-order sampler and of the learned policy's sampling.
"""
from __future__ import annotations

import torch

M32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9  # 2^32 / golden ratio
FNV64_PRIME = 0x100000001B3


def mix(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    """Combine an int64 key with b (an int or int64 tensor): a * FNV-64 prime ^ b, wrapping."""
    return (a * FNV64_PRIME) ^ b


def fmix32(h: torch.Tensor, shift: int = 13) -> torch.Tensor:
    """murmur3's finaliser on int64 tensors holding uint32 values (multiplies wrap, then mask);
    `shift` is the middle xor-shift: 13 in murmur3 (see the module docstring for 16)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & M32
    h = h ^ (h >> shift)
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def row_key(seeds: torch.Tensor) -> torch.Tensor:
    """A uint32 key (in int64) per int64 seed: fmix32(lo(seed) ^ fmix32(hi(seed) ^ GOLDEN))."""
    seeds = seeds.to(torch.int64)
    return fmix32((seeds & M32) ^ fmix32(((seeds >> 32) & M32) ^ GOLDEN))
