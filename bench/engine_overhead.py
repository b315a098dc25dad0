"""Per-step work outside the dLLM forward: the engine against plain Fast-dLLM loops, in one run.

    python bench/engine_overhead.py [--threads 1] [--repeats 3] [--samplers ...] [--json out.json]

The geometry of issue 27: a random LLaDA (d 256, 4 layers, vocabulary 8,192), a 256-token canvas
in blocks of 32, a 40-token prompt, batch 1, greedy. For top-k (4 steps a block) and threshold
0.9, without a cache and with the dual cache, the same prompts are decoded by `Engine.step()` and
by two plain loops on the same model and forward (`plain_decode`): one does per step the
operations of Fast-dLLM's generate / generate_with_dual_cache as Fast-dLLM writes them
(`fastdllm_transfer`), the other the same rule in the fewest vectorised operations, for the
masked positions only (`vectorised_transfer`). Reported: the median time per step outside the
forward of each, the engine's ratio to each, and whether the tokens are identical. Every other
sampler's engine step is timed on the same geometry too."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from unmaskd.dllm import EMBEDDED_MODEL_DIR
from unmaskd.dllm.llada import LLaDAConfig, LLaDAModel
from unmaskd.engine.kv_cache import KVCache
from unmaskd.engine.loop import Engine
from unmaskd.engine.sequence import GenerationRequest
from unmaskd.sampler_plugins.policy_store import STORE

VOCAB, GEN_LENGTH, BLOCK, PROMPT = 8192, 256, 32, 40
THRESHOLD = 0.9
RULES = {"topk_confidence": {}, "threshold": {"threshold": THRESHOLD}}
STEPS_PER_BLOCK = 4  # top-k: 8 tokens a step
OTHER_SAMPLERS = {"random": {}, "factor": {}, "margin": {}, "entropy": {}, "eb": {},
                  "klass": {}, "learned": {"policy": "block12-a1", "allow_other_model": True}}


class IdsOnly:
    """The engine decodes a finished answer to text; a random model has no tokenizer."""

    def decode(self, ids: list[int], **_) -> str:
        return ""


def random_llada(seed: int = 0) -> LLaDAModel:
    cfg = LLaDAConfig(d_model=256, n_layers=4, n_heads=4, mlp_hidden_size=672, vocab_size=VOCAB,
                      embedding_size=VOCAB, max_sequence_length=512, mask_token_id=VOCAB - 1,
                      eos_token_id=VOCAB - 2, pad_token_id=VOCAB - 2)
    model = LLaDAModel(cfg)
    model.init_weights(std=0.5, seed=seed)  # large init: peaked, varied confidences
    return model.eval()


def vectorised_transfer(logits: torch.Tensor, x: torch.Tensor, masked: torch.Tensor, rule: str,
                        k: int) -> torch.Tensor:
    """The leanest step: for the masked positions only, greedy tokens, float64 softmax
    confidences, one stable sort for the rule, the commit. [Q, V] logits of one sequence, x its
    [Q] tokens (returned updated)."""
    index = masked.nonzero().squeeze(1)
    logits = logits[index]
    x0 = logits.argmax(-1)
    conf = F.softmax(logits.double(), -1).gather(-1, x0[:, None]).squeeze(-1)
    order = conf.sort(descending=True, stable=True).indices
    take = torch.zeros_like(conf, dtype=torch.bool)
    if rule == "topk_confidence":
        take[order[:k]] = True
    else:
        take[order[0]] = True
        take |= conf >= THRESHOLD
    x = x.clone()
    x[index[take]] = x0[take]
    return x


def fastdllm_transfer(logits: torch.Tensor, x: torch.Tensor, masked: torch.Tensor, rule: str,
                      k: int) -> torch.Tensor:
    """The operations of Fast-dLLM's get_transfer_index at temperature 0, in its order (a
    [1, Q] batch, a top-k per row, the threshold checked rank by rank in Python), and the
    commit its generate loops do. Ties may order differently from the engine's stable rule."""
    logits, x, masked = logits[None], x[None], masked[None]
    x0 = torch.argmax(logits, dim=-1)
    p = F.softmax(logits.to(torch.float64), dim=-1)
    x0_p = torch.squeeze(torch.gather(p, -1, x0.unsqueeze(-1)), -1)
    x0 = torch.where(masked, x0, x)
    confidence = torch.where(masked, x0_p, -float("inf"))
    take = torch.zeros_like(x0, dtype=torch.bool)
    n = masked.sum(dim=1, keepdim=True) if rule == "threshold" else torch.tensor([[k]])
    for j in range(confidence.shape[0]):
        _, index = torch.topk(confidence[j], k=int(n[j]))
        take[j, index] = True
        if rule == "threshold":
            for rank in range(1, int(n[j])):
                if confidence[j, index[rank]] < THRESHOLD:
                    take[j, index[rank]] = False
    x[take] = x0[take]
    return x[0]


BASELINES = {"Fast-dLLM": fastdllm_transfer, "vectorised": vectorised_transfer}


@torch.no_grad()
def plain_decode(model: LLaDAModel, prompt: list[int], rule: str, cache: str, transfer
                 ) -> tuple[list[int], list[float]]:
    """(canvas, seconds outside the forward per step) of one greedy decode by a plain loop:
    Fast-dLLM's generate (logits of the whole sequence, every step) or
    generate_with_dual_cache (the block's logits over the cache after the block's first step).
    The mask token is never proposed (its logit is -inf), as in the engine."""
    mask_id = model.config.mask_token_id
    P = len(prompt)
    x = torch.tensor([prompt + [mask_id] * GEN_LENGTH])
    attn = torch.ones_like(x, dtype=torch.bool)
    kv = KVCache(model.kv_layout, attn, torch.float32) if cache == "dual" else None
    outside = []
    for b in range(GEN_LENGTH // BLOCK):
        start, end = P + b * BLOCK, P + (b + 1) * BLOCK
        first = True
        while (x[0, start:end] == mask_id).sum() > 0:  # no idle forward once the block is full
            if kv is None or first:
                logits = model(x, attn, kv=kv.fill(None) if kv is not None else None)[0]
                lo = 0
            else:
                cols = torch.arange(start, end)[None]
                logits = model(x[:, start:end], positions=cols, kv=kv.attend(None, cols))[0]
                lo = start
            t0 = time.perf_counter()
            logits[:, mask_id] = float("-inf")
            hi = lo + len(logits)
            masked = x[0, lo:hi] == mask_id
            masked[max(0, end - lo):] = False  # nothing after the current block
            x[0, lo:hi] = transfer(logits, x[0, lo:hi], masked, rule, BLOCK // STEPS_PER_BLOCK)
            outside.append(time.perf_counter() - t0)
            first = False
    return x[0, P:].tolist(), outside


def engine_decode(engine: Engine, prompt: list[int], sampler: str, params: dict
                  ) -> tuple[list[int], list[float], list[float]]:
    """(canvas, seconds outside the forward per step, forward seconds per step)."""
    engine.add(GenerationRequest(prompt, sampler, params, GEN_LENGTH, BLOCK,
                                 steps_per_block=(STEPS_PER_BLOCK if sampler != "threshold"
                                                  else None)))
    outside, forward = [], []
    while engine.active:
        t0 = time.perf_counter()
        report = engine.step()
        outside.append(time.perf_counter() - t0 - report.forward_s)
        forward.append(report.forward_s)
        finished = report.finished
    return finished[0].token_ids, outside, forward


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="prompts per configuration")
    ap.add_argument("--samplers", nargs="*", help="only these (default: all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = random_llada()
    STORE.load_dir(EMBEDDED_MODEL_DIR / "policies", "random-llada")  # for the learned row
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB - 2, (PROMPT,), generator=gen).tolist()
               for _ in range(args.repeats)]
    rows = []
    for cache in ("none", "dual"):
        engine = Engine(model, IdsOnly(), GEN_LENGTH, cache=cache, default_block_length=BLOCK)
        for sampler, params in {**RULES, **OTHER_SAMPLERS}.items():
            if args.samplers and sampler not in args.samplers:
                continue
            mine, fwd = [], []
            base = {name: ([], 0) for name in BASELINES} if sampler in RULES else {}
            for prompt in prompts:
                tokens, outside, forward = engine_decode(engine, prompt, sampler, params)
                mine += outside
                fwd += forward
                for name, transfer in BASELINES.items() if sampler in RULES else ():
                    plain_tokens, plain_outside = plain_decode(model, prompt, sampler, cache,
                                                               transfer)
                    base[name] = (base[name][0] + plain_outside,
                                  base[name][1] + (plain_tokens == tokens))
            row = {"cache": cache, "sampler": sampler, "steps": len(mine),
                   "forward_ms": 1e3 * statistics.median(fwd),
                   "engine_ms": 1e3 * statistics.median(mine)}
            for name, (times, same) in base.items():
                row[name] = {"ms": 1e3 * statistics.median(times),
                             "ratio": statistics.median(mine) / statistics.median(times),
                             "tokens_identical": f"{same}/{len(prompts)}"}
            rows.append(row)
    print(f"# per-step work outside the forward, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, torch {torch.__version__}, {date.today()}")
    print("| cache | sampler | steps | forward ms | engine ms | " + " | ".join(
        f"{name} loop ms | engine / {name} | tokens identical" for name in BASELINES) + " |")
    print("|---" * (5 + 3 * len(BASELINES)) + "|")
    for r in rows:
        cells = [f"{r[n]['ms']:.2f} | {r[n]['ratio']:.2f}x | {r[n]['tokens_identical']}"
                 if n in r else "- | - | -" for n in BASELINES]
        print(f"| {r['cache']} | {r['sampler']} | {r['steps']} | {r['forward_ms']:.1f} "
              f"| {r['engine_ms']:.2f} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
