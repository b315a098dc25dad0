"""A bidirectional transformer, functionally identical to LLaDA's "llama" block type.

Per layer: RMSNorm -> q/k/v -> rotary -> full (non-causal) attention with a key-padding mask ->
attn_out -> residual; RMSNorm -> SwiGLU (silu(ff_proj(x)) * up_proj(x)) -> ff_out -> residual.
Then ln_f and the output projection (tied to wte if `weight_tying`). Module names follow LLaDA's
checkpoint keys (`model.transformer.blocks.{i}.q_proj.weight`, ...), so its safetensors load as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dllm.config import LLaDAConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as LLaDA does, whatever the weights' dtype.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf.to(x.dtype)) * self.weight


def rotary_tables(positions: torch.Tensor, dim: int, theta: float):
    """cos/sin tables [B, 1, T, dim] in fp32 for rotate-half RoPE (LLaDA/OLMo layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device,
                                             dtype=torch.float32) / dim))
    angles = positions.float()[:, None, :, None] * inv_freq
    angles = torch.cat([angles, angles], -1)
    return angles.cos(), angles.sin()


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], -1) * sin).to(x.dtype)


class LLaDABlock(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.cfg = cfg
        head_dim = cfg.d_model // cfg.n_heads
        kv_dim = cfg.n_kv_heads * head_dim
        qkv_bias = cfg.include_bias or cfg.include_qkv_bias
        self.attn_norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, kv_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, kv_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.include_bias)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden_size, bias=cfg.include_bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden_size, bias=cfg.include_bias)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, cfg.d_model, bias=cfg.include_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        cfg = self.cfg
        hd = cfg.d_model // cfg.n_heads
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, T, cfg.n_heads, hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, cfg.n_kv_heads, hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, cfg.n_kv_heads, hd).transpose(1, 2)
        q, k = rotary(q, *rope), rotary(k, *rope)
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, enable_gqa=cfg.n_kv_heads != cfg.n_heads)
        x = x + self.attn_out(att.transpose(1, 2).reshape(B, T, cfg.d_model))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class Transformer(nn.Module):
    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.embedding_size, cfg.d_model)
        self.blocks = nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        if not cfg.weight_tying:
            self.ff_out = nn.Linear(cfg.d_model, cfg.embedding_size, bias=cfg.include_bias)


class LLaDAModel(nn.Module):
    """`forward(input_ids, attention_mask) -> logits [B, T, embedding_size]`."""

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.config = cfg
        self.transformer = Transformer(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if attention_mask is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            positions = positions.expand_as(input_ids)
            bias = None
        else:
            keep = attention_mask.bool()
            # Positions count real tokens only, so left padding does not shift a row's positions.
            positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
            bias = torch.zeros(keep.shape, dtype=torch.float32, device=keep.device)
            bias = bias.masked_fill(~keep, float("-inf"))[:, None, None, :]
        t = self.transformer
        x = t.wte(input_ids)
        if bias is not None:
            bias = bias.to(x.dtype)
        rope = rotary_tables(positions, self.config.d_model // self.config.n_heads,
                             self.config.rope_theta)
        for block in t.blocks:
            x = block(x, rope, bias)
        x = t.ln_f(x)
        head = t.wte.weight if self.config.weight_tying else t.ff_out.weight
        logits = F.linear(x, head)
        if not self.config.weight_tying and t.ff_out.bias is not None:
            logits = logits + t.ff_out.bias
        return logits

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
