"""An independent, batch-size-1 reference for LLaDA decoding with and without Fast-dLLM's caches.

Written from the published algorithms (LLaDA's `generate`; NVlabs/Fast-dLLM llada/generate.py:
`generate`, `generate_with_prefix_cache`, `generate_with_dual_cache`, `get_transfer_index`,
`get_num_transfer_tokens`; its modeling_llada.py for `past_key_values` / `replace_position`) and
sharing no code with unmaskd, so the engine can be checked against it token for token and NFE
for NFE. Greedy (temperature 0) only; unmaskd's one deliberate difference from Fast-dLLM is kept:
the mask token is never proposed (its logit is -inf before the argmax and the softmax).

    model = ReferenceLLaDA(model_dir)
    canvas, nfe = decode(model, prompt_ids, gen_length=16, block_length=4, steps=8,
                         sampler="topk_confidence", cache="dual")

Facts the loops rely on (from Fast-dLLM):
- Every block starts with one full forward over [prompt | canvas]; its logits make the block's
  first commit and its keys/values of every position are the block's cache.
- Prefix cache: later steps of the block run the positions from the block start to the end of
  the canvas and attend to the cached keys/values of the positions before the block.
- Dual cache: later steps run the block's positions only; their fresh keys/values replace the
  block's slice of the cache; positions before and after keep the block-start keys/values.
- RoPE positions are absolute: a slice starting at column s has positions s, s+1, ... (Fast-dLLM
  rotates queries with the positions key_len - query_len.. for the prefix cache and
  block_end - query_len.. for the dual cache, i.e. the slice's own columns).
- Attention is never masked (bidirectional; Fast-dLLM builds a causal bias with a cache but
  passes attn_mask=None to SDPA).
- A block whose masks are all filled by an earlier forward needs no further forward: the loop
  checks the block before each forward (current Fast-dLLM; an older version spent one more).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [H_kv, T, head_dim]


class ReferenceLLaDA:
    """LLaDA's "llama" block stack, written out plainly in fp32 for one sequence."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        self.cfg = json.loads((model_dir / "config.json").read_text())
        raw = load_file(str(model_dir / "model.safetensors"))
        self.w = {k.removeprefix("model.transformer."): t.float() for k, t in raw.items()}
        c = self.cfg
        self.mask_id = c["mask_token_id"]
        self.n_heads = c["n_heads"]
        self.n_kv = c.get("n_kv_heads") or c["n_heads"]
        self.head_dim = c["d_model"] // c["n_heads"]
        self.eps = c.get("rms_norm_eps", 1e-5)
        self.theta = c.get("rope_theta", 10000.0)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        bias = self.w.get(name + ".bias")  # only with include_bias / include_qkv_bias
        y = x @ self.w[name + ".weight"].T
        return y if bias is None else y + bias

    def _rms(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w[name]

    def _rope_tables(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Rotate-half layout: dimension i pairs with i + head_dim/2, both at frequency i.
        half = self.head_dim // 2
        freq = self.theta ** (-torch.arange(half, dtype=torch.float32) * 2 / self.head_dim)
        angle = pos[:, None].float() * freq  # [Q, half]
        return angle.cos().repeat(1, 2), angle.sin().repeat(1, 2)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    @torch.no_grad()
    def forward(self, ids: list[int], start: int = 0, cache: KV | None = None
                ) -> tuple[torch.Tensor, KV]:
        """Logits [Q, V] of the tokens `ids`, which sit at columns start .. start + Q - 1, and
        the fresh (post-RoPE) keys/values of those columns per layer.

        Without `cache` the slice attends only to itself (a full forward: start = 0). With a
        `cache` (a full forward's keys/values over T columns) the slice's fresh keys/values
        replace columns [start, start + Q) and the queries attend to all T columns: the
        prefix cache is the case where the slice runs to the end of the canvas, the dual cache
        the case where it is one block. Storing keys after RoPE is equivalent to Fast-dLLM's
        storing them before and rotating all T of them by column each forward.
        """
        q_len = len(ids)
        cos, sin = self._rope_tables(torch.arange(start, start + q_len))
        x = self.w["wte.weight"][torch.tensor(ids)]
        fresh: KV = []
        for i in range(self.cfg["n_layers"]):
            p = f"blocks.{i}."
            h = self._rms(x, p + "attn_norm.weight")
            q = self._linear(h, p + "q_proj").view(q_len, self.n_heads, -1).transpose(0, 1)
            k = self._linear(h, p + "k_proj").view(q_len, self.n_kv, -1).transpose(0, 1)
            v = self._linear(h, p + "v_proj").view(q_len, self.n_kv, -1).transpose(0, 1)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            fresh.append((k, v))
            if cache is not None:
                ck, cv = cache[i]
                k = torch.cat([ck[:, :start], k, ck[:, start + q_len:]], 1)
                v = torch.cat([cv[:, :start], v, cv[:, start + q_len:]], 1)
            group = self.n_heads // self.n_kv  # query head j reads KV head j // group
            k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
            att = (q @ k.transpose(1, 2) / math.sqrt(self.head_dim)).softmax(-1) @ v
            x = x + self._linear(att.transpose(0, 1).reshape(q_len, -1), p + "attn_out")
            h = self._rms(x, p + "ff_norm.weight")
            ff = torch.nn.functional.silu(self._linear(h, p + "ff_proj")) * self._linear(
                h, p + "up_proj")
            x = x + self._linear(ff, p + "ff_out")
        x = self._rms(x, "ln_f.weight")
        head = "wte" if self.cfg.get("weight_tying") else "ff_out"
        return self._linear(x, head), fresh


def num_transfer_tokens(block_masks: int, steps: int) -> list[int]:
    """LLaDA's get_num_transfer_tokens for one block: masks // steps per step, the remainder
    going one each to the first steps."""
    base, remainder = divmod(block_masks, steps)
    return [base + (i < remainder) for i in range(steps)]


def transfer(logits: torch.Tensor, block: list[int], mask_id: int, k: int | None,
             threshold: float | None) -> list[int]:
    """Fast-dLLM's get_transfer_index at temperature 0 for the block's positions: the greedy
    token of every masked position, confidence = its softmax probability (fp64), and the
    positions to commit: the k most confident (top-k) or the most confident one plus every
    other with confidence >= threshold. Ties go to the lower position (unmaskd's rule; torch's
    topk leaves them unspecified). Returns the block with the chosen positions filled."""
    logits = logits.double().clone()
    logits[:, mask_id] = -math.inf  # the mask token is never proposed
    probs = logits.softmax(-1)
    conf, token = probs.max(-1)  # max returns the first maximal index, like argmax
    masked = [j for j, t in enumerate(block) if t == mask_id]
    ranked = sorted(masked, key=lambda j: -conf[j].item())  # stable: lower position first
    if threshold is None:
        chosen = ranked[:k]
    else:
        chosen = ranked[:1] + [j for j in ranked[1:] if conf[j].item() >= threshold]
    out = list(block)
    for j in chosen:
        out[j] = int(token[j])
    return out


def decode(model: ReferenceLLaDA, prompt_ids: list[int], gen_length: int, block_length: int,
           steps: int, sampler: str = "topk_confidence", threshold: float | None = None,
           cache: str = "none") -> tuple[list[int], int]:
    """(answer canvas token ids, NFE) of greedy semi-autoregressive decoding.

    sampler "topk_confidence": LLaDA's low-confidence remasking with the per-block schedule
    (steps // n_blocks steps per block). sampler "threshold": Fast-dLLM's threshold rule (steps
    unused: a block takes as many forwards as it needs). cache: "none" (LLaDA's `generate`),
    "prefix" or "dual" (Fast-dLLM's generate_with_prefix_cache / generate_with_dual_cache).
    """
    assert sampler in ("topk_confidence", "threshold") and cache in ("none", "prefix", "dual")
    assert (threshold is None) == (sampler == "topk_confidence")
    mask = model.mask_id
    n_blocks = gen_length // block_length
    assert gen_length % block_length == 0 and steps % n_blocks == 0
    x = list(prompt_ids) + [mask] * gen_length
    nfe = 0
    for b in range(n_blocks):
        start = len(prompt_ids) + b * block_length
        end = start + block_length
        schedule = num_transfer_tokens(x[start:end].count(mask), steps // n_blocks)
        # The block-start forward: a full forward in every mode; with a cache, its keys/values
        # of every column are the block's cache.
        logits, kv = model.forward(x)
        logits = logits[start:end]
        nfe += 1
        step = 0
        while True:
            k = schedule[step] if sampler == "topk_confidence" else None
            x[start:end] = transfer(logits, x[start:end], mask, k, threshold)
            step += 1
            if mask not in x[start:end]:  # checked before every forward: no idle forward
                break
            if cache == "none":
                logits = model.forward(x)[0][start:end]
            elif cache == "prefix":  # block start .. end of the canvas over the prefix cache
                logits = model.forward(x[start:], start, kv)[0][:block_length]
            else:  # dual: the block only, over the cache before and after it
                logits = model.forward(x[start:end], start, kv)[0]
            nfe += 1
    return x[len(prompt_ids):], nfe
