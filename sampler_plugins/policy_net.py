"""The learned unmasking policy's network (~300K parameters), as in Jazbec et al. 2026.

Per position: features (the dLLM's confidence; optionally margin and entropy) -> Linear(F, 128);
one DiT-style block (2 heads, FFN 512 GELU, bidirectional attention with rotary positions,
adaLN shift/scale/gate conditioned on mask-bit embedding + sinusoidal timestep embedding through
a 2-layer SiLU MLP); LayerNorm -> Linear(128, 1), one logit per position. adaLN modulation and
the head's weight start at zero and its bias at -2, so every masked position starts at
sigmoid(-2) = 0.12 unmask probability: slow and accurate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from unmaskd.kernels import (
    POLICY_FEATURES as FEATURES,  # the names the confidence kernel embeds too
)


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[n] times in [0, 1] -> [n, dim] sinusoidal embedding."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs  # times are fractions: stretch before sin/cos
    return torch.cat([args.sin(), args.cos()], -1)


def rope(x: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding over positions 0..T-1. x: [n, heads, T, d]."""
    T, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / (10_000.0 ** (torch.arange(0, d, 2, device=x.device).float() / d))
    ang = torch.arange(T, device=x.device).float()[:, None] * inv
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


class PolicyNet(nn.Module):
    def __init__(self, features: tuple[str, ...] = ("confidence",), width: int = 128,
                 heads: int = 2, ffn: int = 512):
        super().__init__()
        unknown = set(features) - set(FEATURES)
        if unknown or not features:
            raise ValueError(f"policy features must be a non-empty subset of {FEATURES}")
        self.features, self.width, self.heads, self.ffn = tuple(features), width, heads, ffn
        self.input = nn.Linear(len(features), width)
        self.mask_embed = nn.Embedding(2, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Linear(ffn, width))
        self.head_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)
        nn.init.zeros_(self.adaln[1].weight)
        nn.init.zeros_(self.adaln[1].bias)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, -2.0)

    def forward(self, feats: torch.Tensor, mask_bits: torch.Tensor, t: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        """feats [n, W, F], mask_bits [n, W] bool, t [n] in [0, 1], valid [n, W] bool
        -> logits [n, W] (one unmask logit per position)."""
        return self.forward_embedded(self.input(feats), mask_bits, t, valid)

    def forward_embedded(self, x: torch.Tensor, mask_bits: torch.Tensor, t: torch.Tensor,
                         valid: torch.Tensor) -> torch.Tensor:
        """forward() after the input layer: x [n, W, width] = self.input(feats), e.g. the
        embedding kernels.confidence_stats(..., policy_input=(self.input.weight,
        self.input.bias, self.features)) computes in the same launch as the statistics."""
        n, W, _ = x.shape
        cond = self.mask_embed(mask_bits.long()) + self.time_mlp(sinusoidal(t, self.width))[:, None]
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(cond).chunk(6, -1)
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).view(n, W, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        bias = torch.zeros(n, 1, 1, W, device=x.device, dtype=x.dtype)
        bias = bias.masked_fill(~valid[:, None, None, :], float("-inf"))
        att = F.scaled_dot_product_attention(rope(q), rope(k), v, attn_mask=bias)
        x = x + gate1 * self.proj(att.transpose(1, 2).reshape(n, W, self.width))
        h = self.norm2(x) * (1 + scale2) + shift2
        x = x + gate2 * self.mlp(h)
        return self.head(self.head_norm(x)).squeeze(-1)

    def architecture(self) -> dict:
        return {"features": list(self.features), "width": self.width, "heads": self.heads,
                "ffn": self.ffn}


def unmask_probs(logits: torch.Tensor, temperature: torch.Tensor | float = 1.0,
                 beta: torch.Tensor | float = 1.0) -> torch.Tensor:
    """s = min(1, beta * sigmoid(b / tau)): the test-time knobs tau_pi and beta."""
    return (beta * torch.sigmoid(logits / temperature)).clamp(max=1.0)


def bernoulli_log_prob(s: torch.Tensor, action: torch.Tensor, decide: torch.Tensor) -> torch.Tensor:
    """Sum over deciding positions of log Bernoulli(action | s). [n, W] -> [n]."""
    eps = 1e-6
    s = s.clamp(eps, 1 - eps)
    lp = torch.where(action, s.log(), (1 - s).log())
    return (lp * decide).sum(-1)


@dataclass
class PolicyStep:
    """What a recording policy saw and did at one step of one rollout (GRPO's training record),
    or, from `stack`, of many: every field gains a leading step dimension."""

    feats: torch.Tensor  # [W, F] the network's input features
    mask_bits: torch.Tensor  # [W] bool: still masked
    t: torch.Tensor  # [] time, NFE / L
    valid: torch.Tensor  # [W] bool: inside the canvas
    decide: torch.Tensor  # [W] bool: the positions the policy decided (the block's masks)
    action: torch.Tensor  # [W] bool: the positions it committed
    logp: torch.Tensor  # [] the policy's log-likelihood of the action when it was taken
    expert: torch.Tensor  # [] bool: the commit followed the expert's rule (steering)

    @classmethod
    def stack(cls, steps: list[PolicyStep]) -> PolicyStep:
        return cls(*(torch.stack([getattr(s, f.name) for s in steps]) for f in fields(cls)))

    def logits(self, net: PolicyNet) -> torch.Tensor:
        """The network's unmask logits for these (stacked) steps."""
        return net(self.feats, self.mask_bits, self.t, self.valid)
