"""An independent, batch-size-1 reference for Dream's `diffusion_generate` at temperature 0.

Written from Dream's published modeling and generation code (DreamLM's Hugging Face release,
copies in NVlabs/Fast-dLLM `dream/model/modeling_dream.py` and `generation_utils.py`) and
sharing no code with unmaskd, so the engine can be checked against it token for token and NFE
for NFE. It reads the checkpoint's safetensors by Dream's own weight names.

    model = ReferenceDream(model_dir)
    canvas, nfe, counts = diffusion_generate(model, prompt_ids, gen_length=16, steps=8,
                                             alg="entropy")

Facts it relies on:
- The forward is Qwen2's layout run without a causal mask: RMSNorm (fp32 statistics), q/k/v with
  bias, o_proj without, half-split RoPE at positions 0..N-1 (one unpadded row), grouped KV heads,
  SwiGLU MLP, final norm, untied lm_head.
- Logits are shifted: generate rolls them right by one (`cat(logits[:, :1], logits[:, :-1])`),
  so position i takes the row of position i - 1.
- One block over the whole canvas: timesteps = torch.linspace(1, eps, steps + 1) (float32); at
  step i, n = int(num_masked * (1 - t[i + 1] / t[i])) in float32, all that is left at the last
  step; every step costs one forward, even one that commits nothing (n = 0).
- Greedy: confidence from softmax(logits) over the full vocabulary (no top-k filter) and the
  argmax token; `maskgit_plus` ranks by the top probability, `topk_margin` by p1 - p2,
  `entropy` by sum p * log(p + 1e-10); torch.topk picks the n best masked positions.
unmaskd's deliberate differences are kept, as in tests/fastdllm_reference.py: the mask token is
never proposed (its logit is -inf before the softmax), and ties go to the lower position.
With `at_least_one`, a step whose n is 0 commits its best-ranked position instead (unmaskd's
rule) and decoding ends once the canvas is full.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [H_kv, T, head_dim]


class ReferenceDream:
    """Dream's decoder stack, written out plainly in fp32 for one sequence."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        self.cfg = json.loads((model_dir / "config.json").read_text())
        index = model_dir / "model.safetensors.index.json"
        files = (sorted(set(json.loads(index.read_text())["weight_map"].values()))
                 if index.is_file() else ["model.safetensors"])
        self.w = {k: t.float() for f in files for k, t in load_file(str(model_dir / f)).items()}
        c = self.cfg
        self.mask_id = c["mask_token_id"]
        self.n_heads = c["num_attention_heads"]
        self.n_kv = c["num_key_value_heads"]
        self.head_dim = c["hidden_size"] // c["num_attention_heads"]

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        bias = self.w.get(name + ".bias")  # q/k/v only
        y = x @ self.w[name + ".weight"].T
        return y if bias is None else y + bias

    def _rms(self, x: torch.Tensor, name: str) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return self.w[name] * (x * torch.rsqrt(var + self.cfg["rms_norm_eps"]))

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # inv_freq[j] = theta^(-2j/d); the angle table is duplicated over both halves and the
        # rotation pairs channel j with j + d/2 (rotate_half).
        d = self.head_dim
        inv_freq = 1.0 / (self.cfg["rope_theta"] ** (torch.arange(0, d, 2).float() / d))
        freqs = pos.float()[:, None] * inv_freq[None]
        emb = torch.cat([freqs, freqs], -1)
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * emb.cos() + torch.cat([-x2, x1], -1) * emb.sin()

    @torch.no_grad()
    def forward(self, ids: list[int], start: int = 0, cache: KV | None = None
                ) -> tuple[torch.Tensor, KV]:
        """Raw (unshifted) logits [Q, V] of the tokens `ids` at positions start .. start + Q - 1
        of one unpadded sequence, and their fresh (post-RoPE) keys/values per layer.

        Without `cache` the tokens attend to themselves (a full forward: start = 0). With a
        full forward's keys/values over T positions, the fresh ones replace positions
        [start, start + Q) and the queries attend to all T: Fast-dLLM's dual cache when the
        slice is one block, its prefix cache when the slice runs to the end (keys before the
        block cached, the rest fresh). Keys cached after RoPE equal Fast-dLLM's rotating its
        pre-RoPE cache by position at every forward."""
        n = len(ids)
        pos = torch.arange(start, start + n)
        x = self.w["model.embed_tokens.weight"][torch.tensor(ids)]
        fresh: KV = []
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = self._rms(x, p + "input_layernorm.weight")
            q = self._linear(h, p + "self_attn.q_proj").view(n, self.n_heads, -1).transpose(0, 1)
            k = self._linear(h, p + "self_attn.k_proj").view(n, self.n_kv, -1).transpose(0, 1)
            v = self._linear(h, p + "self_attn.v_proj").view(n, self.n_kv, -1).transpose(0, 1)
            q, k = self._rope(q, pos), self._rope(k, pos)
            fresh.append((k, v))
            if cache is not None:
                ck, cv = cache[i]
                k = torch.cat([ck[:, :start], k, ck[:, start + n:]], 1)
                v = torch.cat([cv[:, :start], v, cv[:, start + n:]], 1)
            group = self.n_heads // self.n_kv  # query head j reads KV head j // group
            k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
            att = (q @ k.transpose(1, 2) / math.sqrt(self.head_dim)).softmax(-1) @ v
            x = x + self._linear(att.transpose(0, 1).reshape(n, -1), p + "self_attn.o_proj")
            h = self._rms(x, p + "post_attention_layernorm.weight")
            gate = torch.nn.functional.silu(self._linear(h, p + "mlp.gate_proj"))
            x = x + self._linear(gate * self._linear(h, p + "mlp.up_proj"), p + "mlp.down_proj")
        return self._linear(self._rms(x, "model.norm.weight"), "lm_head"), fresh


def confidence(logits: torch.Tensor, mask_id: int, alg: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's sample_tokens at temperature 0 (fp64 here): (confidence, argmax token) per row."""
    logits = logits.double().clone()
    logits[:, mask_id] = -math.inf  # unmaskd: the mask token is never proposed
    probs = logits.softmax(-1)
    top, token = probs.max(-1)
    if alg == "maskgit_plus":
        return top, token
    if alg == "topk_margin":
        two = probs.topk(2, -1).values
        return two[:, 0] - two[:, 1], token
    assert alg == "entropy"
    return (probs * torch.log(probs + 1e-10)).sum(-1), token


def diffusion_generate(model: ReferenceDream, prompt_ids: list[int], gen_length: int, steps: int,
                       alg: str, eps: float = 1e-3, at_least_one: bool = False
                       ) -> tuple[list[int], int, list[int]]:
    """(answer canvas token ids, NFE, tokens committed at each step)."""
    mask = model.mask_id
    x = list(prompt_ids) + [mask] * gen_length
    timesteps = torch.linspace(1, eps, steps + 1)
    counts: list[int] = []
    for i in range(steps):
        logits = model.forward(x)[0]
        logits = torch.cat([logits[:1], logits[:-1]])  # position j reads row j - 1
        masked = [j for j, t in enumerate(x) if t == mask]
        conf, token = confidence(logits[masked], mask, alg)
        num_masked = torch.tensor(len(masked)) / 1  # Dream: mask_index.sum() / batch, float32
        t, s = timesteps[i], timesteps[i + 1]
        n = int(num_masked * (1 - s / t)) if i < steps - 1 else len(masked)
        if at_least_one:
            n = max(n, 1)
        order = sorted(range(len(masked)), key=lambda r: -conf[r].item())  # stable
        for r in order[:n]:
            x[masked[r]] = int(token[r])
        counts.append(n)
        if at_least_one and mask not in x:
            break
    return x[len(prompt_ids):], len(counts), counts


def num_transfer_tokens(block_masks: int, steps: int) -> list[int]:
    """LLaDA's per-block schedule: masks // steps per step, the remainder to the first steps."""
    base, remainder = divmod(block_masks, steps)
    return [base + (i < remainder) for i in range(steps)]


def cached_decode(model: ReferenceDream, prompt_ids: list[int], gen_length: int,
                  block_length: int, steps: int, threshold: float | None = None,
                  cache: str = "dual") -> tuple[list[int], int]:
    """(answer canvas, NFE) of Fast-dLLM's Dream block loop (generation_utils_block.py) with
    unmaskd's commit rules: top-k confidence on LLaDA's per-block schedule, or Fast-dLLM's
    threshold (the best position plus every other at or above it).

    The forwards are Fast-dLLM's: each block starts with a full forward whose keys/values are
    the cache; later steps run the block to the end of the canvas (prefix) or the block alone
    (dual) at their own positions, and shift the slice's logits inside it, so a position after
    the block's first reads the slice's row before it. Fast-dLLM commits the block's first
    position at the block start whatever its rule, so it never reads that position's logits
    again; unmaskd's rules may leave it masked, and then it keeps the block-start forward's
    logits (the last forward that gave it shifted logits), as the engine keeps a position's
    latest statistics outside a cached slice.
    """
    mask = model.mask_id
    x = list(prompt_ids) + [mask] * gen_length
    n_blocks = gen_length // block_length
    nfe = 0
    for b in range(n_blocks):
        start = len(prompt_ids) + b * block_length
        end = start + block_length
        raw, kv = model.forward(x)
        logits = torch.cat([raw[:1], raw[:-1]])[start:end]
        first = logits[0]
        nfe += 1
        schedule = num_transfer_tokens(x[start:end].count(mask), steps // n_blocks)
        step = 0
        while True:
            conf, token = confidence(logits, mask, "maskgit_plus")
            masked = [j for j in range(block_length) if x[start + j] == mask]
            ranked = sorted(masked, key=lambda j: -conf[j].item())  # stable: lower first
            chosen = (ranked[:schedule[step]] if threshold is None else
                      ranked[:1] + [j for j in ranked[1:] if conf[j].item() >= threshold])
            for j in chosen:
                x[start + j] = int(token[j])
            step += 1
            if mask not in x[start:end]:
                break
            if cache == "none":
                raw = model.forward(x)[0]
                logits = torch.cat([raw[:1], raw[:-1]])[start:end]
            else:
                stop = len(x) if cache == "prefix" else end
                raw = model.forward(x[start:stop], start, kv)[0]
                logits = torch.cat([first[None], raw[:block_length - 1]])
            nfe += 1
    return x[len(prompt_ids):], nfe
