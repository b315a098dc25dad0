"""Dream's forward against LLaDA's at equal shapes: does the second family cost the same?

    python bench/dream_forward.py [--hidden 1024] [--layers 4] [--heads 16] [--kv-heads 4]
        [--mlp 2816] [--vocab 32000] [--seq 256] [--batch 1] [--repeats 15] [--threads 1]
        [--json out.json]

Both models get random fp32 weights and the same sizes (hidden, layers, heads, KV heads, MLP
width, vocabulary); Dream differs by its q/k/v biases and by nothing else the forward computes.
One full forward over `batch` x `seq` tokens (prompt and canvas: what a cacheless step runs),
timed alternately Dream, LLaDA, Dream, ... so that load from other jobs on a shared machine
falls on both. The result: the medians and their ratio, and the median of the per-pair ratios
(each Dream forward over the LLaDA forward right after it), which drifting load disturbs least.
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
from unmaskd.dllm.dream import DreamConfig, DreamModel
from unmaskd.dllm.llada import LLaDAConfig, LLaDAModel


def build(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    dream = DreamModel(DreamConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.mlp,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, mask_token_id=args.vocab - 1, eos_token_id=0,
        rope_theta=1e6))
    llada = LLaDAModel(LLaDAConfig(
        d_model=args.hidden, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
        mlp_hidden_size=args.mlp, vocab_size=args.vocab, embedding_size=args.vocab,
        max_sequence_length=4096, mask_token_id=args.vocab - 1, eos_token_id=0, pad_token_id=0))
    llada.init_weights(seed=0)
    with torch.no_grad():  # Dream: random weights and biases too (init is not what is timed)
        for p in dream.parameters():
            p.normal_(0.0, 0.02)
    models = {"dream": dream.eval(), "llada": llada.eval()}
    dream_params = sum(p.numel() for p in dream.parameters())
    llada_params = sum(p.numel() for p in llada.parameters())
    assert dream_params - llada_params == args.layers * (args.hidden + 2 * args.kv_heads
                                                         * args.hidden // args.heads)
    return models


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    for name, default in (("hidden", 1024), ("layers", 4), ("heads", 16), ("kv-heads", 4),
                          ("mlp", 2816), ("vocab", 32000), ("seq", 256), ("batch", 1),
                          ("repeats", 15), ("threads", 1)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = build(args)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq),
                        generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids, dtype=torch.bool)
    for model in models.values():  # warm up allocator and kernels
        model(ids, attn)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():  # interleaved: a busy moment hits both
            t0 = time.perf_counter()
            model(ids, attn)
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": args.threads,
        "sizes": {k: getattr(args, k) for k in ("hidden", "layers", "heads", "kv_heads", "mlp",
                                                "vocab", "seq", "batch")},
        "dream_ms": round(1e3 * med["dream"], 2), "llada_ms": round(1e3 * med["llada"], 2),
        "ratio": round(med["dream"] / med["llada"], 3),
        "pair_ratio_median": round(statistics.median(
            d / ll for d, ll in zip(times["dream"], times["llada"])), 3),
        "min_ratio": round(min(times["dream"]) / min(times["llada"]), 3),
        "dream_ms_all": [round(1e3 * t, 2) for t in times["dream"]],
        "llada_ms_all": [round(1e3 * t, 2) for t in times["llada"]],
    }
    print(f"Dream {result['dream_ms']} ms, LLaDA {result['llada_ms']} ms (medians of "
          f"{args.repeats}); Dream / LLaDA = {result['ratio']}, median per-pair ratio "
          f"{result['pair_ratio_median']}, fastest / fastest {result['min_ratio']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
