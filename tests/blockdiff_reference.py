"""An independent, batch-size-1 reference for the block-diffusion families' own decoding (SDAR /
TraDo and LLaDA2) at temperature 0, with its own forward for both families, and tiny random
checkpoints in each family's folder format.

Written from the published code, sharing none with unmaskd: JetAstra/SDAR generate.py
(`block_diffusion_generate`, `get_num_transfer_tokens`) and modeling_sdar.py; inclusionAI's
LLaDA2 modeling_llada2_moe.py (`LLaDA2MoeModelLM.generate`, `_get_num_transfer_tokens`, the gate,
attention and MoE). unmaskd's rules: greedy means the argmax with the softmax probability of it
as confidence (the mask token's logit is -inf first, so it is never proposed); committed tokens
are never changed.

    canvas, nfe, cache_writes = reference_decode(model_dir, prompt_ids, gen_length=16,
                                                 block_length=4, steps_per_block=4,
                                                 sampler="threshold", threshold=0.9)

Facts the decode relies on (file names are the published ones):
- Canvas (both generate functions): n_blocks = ceil((P + gen_length) / B) blocks of B positions
  from absolute position 0; x = prompt + masks, total length n_blocks * B, so the last block
  runs past P + gen_length and those positions are decoded like any other.
- The prompt's P // B full blocks are prefilled once with the block-causal mask (SDAR
  generate.py: one forward with store_kv). Decoding starts at block P // B: when P % B != 0 that
  block holds the prompt's last P % B tokens (never changed) and the first answer positions.
- Each step runs the current block only, attending to the cached blocks and to itself
  (bidirectionally), RoPE at absolute positions; only the block's masked positions are
  candidates. A block ends as soon as it has no mask (checked before every forward); then one
  more forward of the finished block writes its keys/values (SDAR: store_kv=True; counted as a
  cache write, never as NFE, as is the prefill). LLaDA2's generate instead reruns the whole
  window [0, block end) with the block-causal mask at every step and writes nothing: the same
  logits, since no block sees a later one (`decode(..., prefix="recompute")` does that).
- Schedule, from B (also for the partial first block): k_i = B // s, +1 for the first B % s
  steps, s = steps_per_block; LLaDA2 caps s at gen_length first (`steps = min(steps,
  gen_length // minimal_topk)`, minimal_topk = 1).
- Threshold ("low_confidence_dynamic" in SDAR, LLaDA2's only rule): the masked positions with
  confidence > t (strictly); if fewer than k_i pass, the k_i most confident instead. Top-k
  ("low_confidence_static", SDAR only; LLaDA2 gets it with a threshold above 1): the k_i most
  confident. Ties go to the lower position.
- Where a step's k_i exceeds the block's remaining masks, LLaDA2 takes min(k_i, masks); SDAR's
  torch.topk over confidences that are -inf off the masks picks unmasked positions too and
  overwrites them with their argmax (prompt tail or committed tokens, in torch's tie order).
  This reference commits min(k_i, masks) for both. It happens only in the partial first block
  or after a threshold step committed more than its k_i, never with one step per position.
- EOS stop: after a finished block, stop if an EOS is anywhere in x[P:] (SDAR:
  stopping_criteria_idx, from generation_config.json's eos_token_id list; LLaDA2: always, with
  its eos_id). LLaDA2's `eos_early_stop` (mid-block) is off by default and not modelled.
- Returned canvas: x[P:], all n_blocks * B - P positions, masks left in blocks never decoded
  after a stop. SDAR's generate returns all of x; LLaDA2's returns x[P : P + gen_length] cut
  after its first EOS.
- Greedy at temperature 0: SDAR's generate.py divides by the temperature (cannot run at 0);
  LLaDA2's falls through to sampling at T = 1. Both are read as the argmax here.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [H_kv, positions, hd]
SAMPLERS = ("threshold", "topk_confidence")


class ReferenceModel:
    """Both families' forward, written out plainly in fp32 for one sequence."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        c = json.loads((model_dir / "config.json").read_text())
        self.family = c["model_type"]
        assert self.family in ("sdar", "llada2_moe"), self.family
        self.w: dict[str, torch.Tensor] = {}
        for path in sorted(model_dir.glob("*.safetensors")):
            self.w.update({k: t.float() for k, t in load_file(str(path)).items()})
        self.c = c
        self.n_heads = c["num_attention_heads"]
        self.n_kv = c["num_key_value_heads"]
        self.head_dim = c.get("head_dim") or c["hidden_size"] // self.n_heads
        if self.family == "sdar":
            self.mask_id, self.eos_id = c["mask_token_id"], c["eos_token_id"]
            self.eps = c.get("rms_norm_eps", 1e-6)
            self.rotary_dim = self.head_dim
        else:  # LLaDA2MoeConfig's defaults where the file is silent
            self.mask_id = _declared_id(model_dir, "mask_token")
            self.eos_id = _declared_id(model_dir, "eos_token")
            self.eps = c.get("rms_norm_eps", 1e-5)
            self.rotary_dim = int(self.head_dim * c.get("partial_rotary_factor", 0.5))
        self.theta = c.get("rope_theta", 10000.0)
        self.embed = "model.embed_tokens.weight" if self.family == "sdar" else \
            "model.word_embeddings.weight"

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        bias = self.w.get(name + ".bias")
        y = x @ self.w[name + ".weight"].T
        return y if bias is None else y + bias

    def _rms(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w[name]

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rotate-half RoPE on the first rotary_dim channels: channel i pairs with i + rd/2."""
        half = self.rotary_dim // 2
        freq = self.theta ** (-torch.arange(half, dtype=torch.float32) * 2 / self.rotary_dim)
        angle = pos[:, None].float() * freq  # [Q, half]
        cos, sin = angle.cos(), angle.sin()
        x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], -1)

    def _qkv(self, h: torch.Tensor, p: str) -> tuple[torch.Tensor, ...]:
        """Queries [H, Q, hd], keys and values [H_kv, Q, hd], normalised, before RoPE."""
        q_len, hd = len(h), self.head_dim
        if self.family == "sdar":
            q = self._linear(h, p + "self_attn.q_proj").view(q_len, self.n_heads, hd)
            k = self._linear(h, p + "self_attn.k_proj").view(q_len, self.n_kv, hd)
            v = self._linear(h, p + "self_attn.v_proj").view(q_len, self.n_kv, hd)
            q = self._rms(q, p + "self_attn.q_norm.weight")
            k = self._rms(k, p + "self_attn.k_norm.weight")
        else:
            qkv = self._linear(h, p + "attention.query_key_value").view(q_len, -1, hd)
            q, k, v = (qkv[:, :self.n_heads], qkv[:, self.n_heads:self.n_heads + self.n_kv],
                       qkv[:, self.n_heads + self.n_kv:])
            if self.c.get("use_qk_norm", True):
                q = self._rms(q, p + "attention.query_layernorm.weight")
                k = self._rms(k, p + "attention.key_layernorm.weight")
        return q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)

    def _swiglu(self, h: torch.Tensor, p: str) -> torch.Tensor:
        gate = torch.nn.functional.silu(self._linear(h, p + "gate_proj"))
        return self._linear(gate * self._linear(h, p + "up_proj"), p + "down_proj")

    def _moe(self, h: torch.Tensor, p: str) -> torch.Tensor:
        """LLaDA2's sparse block, one token at a time."""
        c = self.c
        n_group, top_groups = c.get("n_group", 8), c.get("topk_group", 4)
        k, scale = c.get("num_experts_per_tok", 2), c.get("routed_scaling_factor", 2.5)
        scores = torch.sigmoid(h @ self.w[p + "gate.weight"].T)  # [Q, E], fp32 throughout
        biased = scores + self.w[p + "gate.expert_bias"]
        per_group = biased.shape[1] // n_group
        out = torch.zeros_like(h)
        for t in range(len(h)):
            groups = [sorted(biased[t, g * per_group:(g + 1) * per_group].tolist())[-2:]
                      for g in range(n_group)]
            kept = sorted(range(n_group), key=lambda g: -sum(groups[g]))[:top_groups]
            candidates = [e for g in kept for e in range(g * per_group, (g + 1) * per_group)]
            chosen = sorted(candidates, key=lambda e: -biased[t, e].item())[:k]
            weights = scores[t, chosen]
            if k > 1:
                weights = weights / (weights.sum() + 1e-20)
            for e, wt in zip(chosen, weights * scale):
                out[t] += wt * self._swiglu(h[t:t + 1], f"{p}experts.{e}.")[0]
        if c.get("num_shared_experts") is not None:
            out = out + self._swiglu(h, p + "shared_experts.")
        return out

    @torch.no_grad()
    def forward(self, ids: list[int], start: int, cache: KV | None, block: int
                ) -> tuple[torch.Tensor, KV]:
        """Logits [Q, V] of the tokens `ids` at positions start .. start + Q - 1, attending to
        `cache` (keys/values of positions 0 .. start - 1) and to themselves under the
        block-causal rule (key s visible from query p iff s // block <= p // block), and the
        fresh post-RoPE keys/values of those positions."""
        q_len = len(ids)
        pos = torch.arange(start, start + q_len)
        key_pos = torch.arange(start + q_len)
        visible = (key_pos[None, :] // block) <= (pos[:, None] // block)
        x = self.w[self.embed][torch.tensor(ids)]
        fresh: KV = []
        for i in range(self.c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            q, k, v = self._qkv(self._rms(x, p + "input_layernorm.weight"), p)
            q, k = self._rope(q, pos), self._rope(k, pos)
            fresh.append((k, v))
            if cache is not None:
                k, v = torch.cat([cache[i][0], k], 1), torch.cat([cache[i][1], v], 1)
            group = self.n_heads // self.n_kv  # query head j reads KV head j // group
            k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
            scores = q @ k.transpose(1, 2) / math.sqrt(self.head_dim)
            att = scores.masked_fill(~visible, -math.inf).softmax(-1) @ v
            att = att.transpose(0, 1).reshape(q_len, -1)
            out = "self_attn.o_proj" if self.family == "sdar" else "attention.dense"
            x = x + self._linear(att, p + out)
            h = self._rms(x, p + "post_attention_layernorm.weight")
            dense = self.family == "sdar" or i < self.c.get("first_k_dense_replace", 0) \
                or self.c.get("num_experts", 16) is None
            x = x + (self._swiglu(h, p + "mlp.") if dense else self._moe(h, p + "mlp."))
        x = self._rms(x, "model.norm.weight")
        head = self.embed if self.c.get("tie_word_embeddings") else "lm_head.weight"
        return x @ self.w[head].T, fresh


def _declared_id(model_dir: Path, name: str) -> int:
    """LLaDA2's mask/eos: the token tokenizer_config.json declares, numbered by tokenizer.json."""
    declared = json.loads((model_dir / "tokenizer_config.json").read_text())[name]
    content = declared["content"] if isinstance(declared, dict) else declared
    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).token_to_id(content)


def num_transfer_tokens(block_length: int, steps: int) -> list[int]:
    """get_num_transfer_tokens / _get_num_transfer_tokens: B // s per step, the remainder going
    one each to the first steps."""
    base, remainder = divmod(block_length, steps)
    return [base + (i < remainder) for i in range(steps)]


def commit(logits: torch.Tensor, block: list[int], mask_id: int, k: int,
           threshold: float | None) -> list[int]:
    """One step's commits in a block: the greedy token of every masked position, confidence =
    its softmax probability (fp64, mask token excluded); threshold: those > t, or the top
    min(k, masks) when fewer than k pass; top-k: the top min(k, masks)."""
    logits = logits.double().clone()
    logits[:, mask_id] = -math.inf
    conf, token = logits.softmax(-1).max(-1)
    masked = [j for j, t in enumerate(block) if t == mask_id]
    ranked = sorted(masked, key=lambda j: -conf[j].item())  # stable: lower position first
    chosen = ranked[:k]
    if threshold is not None:
        sure = [j for j in masked if conf[j].item() > threshold]
        chosen = sure if len(sure) >= k else chosen
    out = list(block)
    for j in chosen:
        out[j] = int(token[j])
    return out


def decode(model: ReferenceModel, prompt_ids: list[int], gen_length: int, block_length: int,
           steps_per_block: int, sampler: str = "threshold", threshold: float | None = None,
           stop_at_eos: bool = False, prefix: str = "cache") -> tuple[list[int], int, int]:
    """(canvas x[P:], NFE, cache writes) of the family's block-diffusion decode; `prefix`
    "cache" (SDAR's procedure) or "recompute" (LLaDA2's published loop, no cache writes)."""
    assert sampler in SAMPLERS and prefix in ("cache", "recompute")
    assert (threshold is None) == (sampler == "topk_confidence")
    B, P, mask = block_length, len(prompt_ids), model.mask_id
    n_blocks = -(-(P + gen_length) // B)
    steps = min(steps_per_block, gen_length) if model.family == "llada2_moe" else steps_per_block
    schedule = num_transfer_tokens(B, steps)
    x = list(prompt_ids) + [mask] * (n_blocks * B - P)
    nfe = writes = 0
    cache: KV | None = None
    if P // B and prefix == "cache":  # the prompt's full blocks, once
        cache = model.forward(x[:P // B * B], 0, None, B)[1]
        writes += 1
    for b in range(P // B, n_blocks):
        start, end = b * B, (b + 1) * B
        step = 0
        while mask in x[start:end]:
            if prefix == "cache":
                logits = model.forward(x[start:end], start, cache, B)[0]
            else:
                logits = model.forward(x[:end], 0, None, B)[0][start:]
            nfe += 1
            x[start:end] = commit(logits, x[start:end], mask, schedule[step], threshold)
            step += 1
        if prefix == "cache":  # the finished block's keys/values
            fresh = model.forward(x[start:end], start, cache, B)[1]
            cache = fresh if cache is None else [
                (torch.cat([ck, k], 1), torch.cat([cv, v], 1))
                for (ck, cv), (k, v) in zip(cache, fresh)]
            writes += 1
        if stop_at_eos and model.eos_id in x[P:end]:
            break
    return x[P:], nfe, writes


@lru_cache(maxsize=8)
def _load(model_dir: str) -> ReferenceModel:
    return ReferenceModel(model_dir)


def reference_decode(model_dir: str | Path, prompt_ids: list[int], gen_length: int,
                     block_length: int, steps_per_block: int, sampler: str = "threshold",
                     threshold: float | None = None, stop_at_eos: bool = False
                     ) -> tuple[list[int], int, int]:
    """The family's decode of `prompt_ids` on the checkpoint in `model_dir`: (canvas after the
    prompt, NFE, cache writes). See the module docstring for what each means."""
    return decode(_load(str(model_dir)), list(prompt_ids), gen_length, block_length,
                  steps_per_block, sampler, threshold, stop_at_eos)


# ---- prompts and settings for the tiny checkpoints ----------------------------------------------

# A chat-templated question (31 tokens: a partial first block at B = 4 and 8), a prompt shorter
# than a block (no prefill) and one of exactly 8 tokens (no partial block).
PROMPT_TEXTS = ("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n", "ab",
                "12345678")


def prompts(model_dir: str | Path) -> list[list[int]]:
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    return [tok.encode(text, add_special_tokens=False).ids for text in PROMPT_TEXTS]


def cases() -> list[dict]:
    """reference_decode settings worth comparing: top-k at 1, 2, 3 (a remainder) and B steps per
    block; threshold at three levels with 2 and B steps per block, with and without the EOS
    stop; canvases whose last block runs past the answer (10 at B = 8)."""
    out = []
    for gen_length, block_length in ((16, 4), (10, 8)):
        shape = {"gen_length": gen_length, "block_length": block_length}
        for steps in sorted({1, 2, 3, block_length}):
            out.append({**shape, "steps_per_block": steps, "sampler": "topk_confidence",
                        "threshold": None, "stop_at_eos": False})
        for threshold in (0.3, 0.6, 0.9):
            for steps, stop in ((2, False), (block_length, False), (block_length, True)):
                out.append({**shape, "steps_per_block": steps, "sampler": "threshold",
                            "threshold": threshold, "stop_at_eos": stop})
    return out


# ---- tiny random checkpoints in each family's folder format ------------------------------------

MASK, EOS, IM_START, IM_END = "<|mask|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}" + IM_START + "{{ message['role'] }}\n"
    "{{ message['content'] }}" + IM_END + "\n{% endfor %}"
    "{% if add_generation_prompt %}" + IM_START + "assistant\n{% endif %}"
)


def write_tokenizer(out: Path) -> Tokenizer:
    """A byte-level tokenizer (256 byte symbols, no merges) with the special tokens. The mask and
    EOS are declared in tokenizer_config.json, as LLaDA2 needs."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(sorted(alphabet))},
                               merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS, MASK, IM_START, IM_END])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": EOS,
              "mask_token": MASK, "model_max_length": 256, "chat_template": CHAT_TEMPLATE,
              "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tok


def _random_weights(shapes: dict[str, tuple[int, ...]], seed: int, eos_id: int, anchor: int
                    ) -> dict[str, torch.Tensor]:
    """Large random matrices (peaked, varied confidences; the head twice as large), norms near 1.
    EOS's head row is 1.1 x the row of `anchor`, a token these decodes write mid-canvas now and
    then, so EOS shows up there and stop_at_eos has something to stop at."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if "norm" in name:
            state[name] = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("expert_bias"):
            state[name] = 0.3 * torch.randn(shape, generator=gen)
        else:
            state[name] = 0.5 * torch.randn(shape, generator=gen)
    head = state["lm_head.weight"]
    head *= 2
    head[eos_id] = 1.1 * head[anchor]
    return state


def build_tiny_sdar(out: Path, seed: int = 0) -> Path:
    """A 2-layer SDAR checkpoint: GQA with an explicit head_dim, q/k norms, untied head."""
    tok = write_tokenizer(out)
    vocab, mask_id, eos_id = tok.get_vocab_size(), tok.token_to_id(MASK), tok.token_to_id(EOS)
    cfg = {"architectures": ["SDARForCausalLM"], "model_type": "sdar", "hidden_size": 32,
           "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 16, "vocab_size": vocab,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "rope_scaling": None, "hidden_act": "silu", "attention_bias": False,
           "use_sliding_window": False, "sliding_window": None, "tie_word_embeddings": False,
           "block_size": 4, "mask_token_id": mask_id, "eos_token_id": eos_id,
           "bos_token_id": eos_id, "torch_dtype": "float32"}
    h, hd = cfg["hidden_size"], cfg["head_dim"]
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,),
              "lm_head.weight": (vocab, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (4 * hd, h), p + "self_attn.k_proj.weight": (2 * hd, h),
            p + "self_attn.v_proj.weight": (2 * hd, h), p + "self_attn.o_proj.weight": (h, 4 * hd),
            p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,),
            p + "mlp.gate_proj.weight": (48, h), p + "mlp.up_proj.weight": (48, h),
            p + "mlp.down_proj.weight": (h, 48)})
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(_random_weights(shapes, seed, eos_id, anchor=65), str(out / "model.safetensors"))
    return out


def build_tiny_llada2(out: Path, seed: int = 0) -> Path:
    """A 2-layer LLaDA2 checkpoint: a dense first layer, then 6 experts in 2 groups (1 kept, 2
    experts per token) plus a shared expert; partial rotary (half of head_dim), qk-norm; no
    mask/eos ids in config.json."""
    tok = write_tokenizer(out)
    vocab, eos_id = tok.get_vocab_size(), tok.token_to_id(EOS)
    cfg = {"architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe", "hidden_size": 32,
           "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 16, "vocab_size": vocab,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "rope_scaling": None, "partial_rotary_factor": 0.5, "rotary_dim": 8,
           "hidden_act": "silu", "use_qkv_bias": False, "use_bias": False, "use_qk_norm": True,
           "norm_head": False, "tie_word_embeddings": False, "use_sliding_window": False,
           "num_experts": 6, "num_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2,
           "topk_group": 1, "routed_scaling_factor": 2.5, "moe_intermediate_size": 16,
           "first_k_dense_replace": 1, "score_function": "sigmoid", "norm_topk_prob": True,
           "router_dtype": "fp32", "moe_router_enable_expert_bias": True, "pad_token_id": eos_id,
           "torch_dtype": "float32"}
    h, hd = cfg["hidden_size"], cfg["head_dim"]
    shapes = {"model.word_embeddings.weight": (vocab, h), "model.norm.weight": (h,),
              "lm_head.weight": (vocab, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "attention.query_key_value.weight": ((4 + 2 * 2) * hd, h),
            p + "attention.query_layernorm.weight": (hd,),
            p + "attention.key_layernorm.weight": (hd,), p + "attention.dense.weight": (h, 4 * hd)})
        experts = [p + "mlp."] if i < cfg["first_k_dense_replace"] else \
            [f"{p}mlp.experts.{e}." for e in range(6)] + [p + "mlp.shared_experts."]
        width = 48 if i < cfg["first_k_dense_replace"] else 16
        for e in experts:
            shapes.update({e + "gate_proj.weight": (width, h), e + "up_proj.weight": (width, h),
                           e + "down_proj.weight": (h, width)})
        if i >= cfg["first_k_dense_replace"]:
            shapes.update({p + "mlp.gate.weight": (6, h), p + "mlp.gate.expert_bias": (6,)})
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(_random_weights(shapes, seed, eos_id, anchor=179), str(out / "model.safetensors"))
    return out
