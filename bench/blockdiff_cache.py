"""Block-diffusion decoding: per-step cost with the exact block cache vs recomputing the prefix.

    .venv/bin/python bench/blockdiff_cache.py [--lengths 64 256 1024] [--threads 2] [--json F]

A random SDAR-shaped model (Qwen3 layout: 8 layers, hidden 512, 8 query / 4 KV heads of 64,
MLP 1408, vocab 4096, blocks of 4) decodes the last 32 positions of a canvas of each length (the
prompt fills the rest) at one token per step, once with `--cache dual` (each step runs the block
over the cached earlier blocks) and once with `--cache none` (each step reruns the whole window
with the block-causal mask: LLaDA2's own generate). The two give the same tokens (checked); the
modes alternate, `--repeats` times, and the median time per denoising step is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from unmaskd.dllm.sdar import SDARConfig, SDARModel
from unmaskd.engine.loop import Engine
from unmaskd.engine.sequence import GenerationRequest

ANSWER = 32


class Silent:
    """A tokenizer stand-in: the bench reads token ids, never text."""

    def decode(self, ids, skip_special_tokens=False) -> str:
        return ""


def random_sdar(max_len: int) -> torch.nn.Module:
    cfg = SDARConfig.from_dict({
        "model_type": "sdar", "hidden_size": 512, "intermediate_size": 1408,
        "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 64, "vocab_size": 4096, "max_position_embeddings": max_len,
        "block_size": 4, "mask_token_id": 4095, "eos_token_id": 0}, None)
    model = SDARModel(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def time_decode(engine: Engine, prompt: list[int]) -> tuple[float, list[int], int]:
    t0 = time.perf_counter()
    (r,) = engine.generate([GenerationRequest(prompt, "topk_confidence", gen_length=ANSWER,
                                              block_length=4)])
    return (time.perf_counter() - t0) / r.nfe, r.token_ids, r.nfe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = random_sdar(max(args.lengths))
    engines = {m: Engine(model, Silent(), cache=m) for m in ("none", "dual")}
    rows = []
    for length in args.lengths:
        prompt = [(7 * i + 3) % 4000 + 1 for i in range(length - ANSWER)]
        times: dict[str, list[float]] = {"none": [], "dual": []}
        tokens = {}
        for _ in range(args.repeats):
            for mode, engine in engines.items():
                step_s, tokens[mode], nfe = time_decode(engine, prompt)
                times[mode].append(step_s)
        assert tokens["none"] == tokens["dual"], "the exact cache changed the tokens"
        none, dual = (statistics.median(times[m]) for m in ("none", "dual"))
        rows.append({"canvas": length, "nfe": nfe, "recompute_step_ms": none * 1e3,
                     "cached_step_ms": dual * 1e3, "speedup": none / dual})
        print(f"canvas {length:5d}: recompute {none * 1e3:8.1f} ms/step, exact cache "
              f"{dual * 1e3:7.1f} ms/step, {none / dual:5.2f}x ({nfe} steps)", flush=True)
    if args.json:
        meta = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
                "threads": args.threads, "repeats": args.repeats, "answer": ANSWER}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
