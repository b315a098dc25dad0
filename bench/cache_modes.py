"""KV-cache modes on the embedded model: accuracy (95% CI), NFE and seqs/s for none/prefix/dual.

    .venv/bin/python bench/cache_modes.py [--n 500] [--threads 2] [--json bench/results/cache.json]

Block mode (blocks of 12 on the 48-token canvas), test split, greedy, two rules: top-k at one
token per step (48 NFE: 11 cached steps per block start) and Fast-dLLM's threshold 0.9 (about 5
NFE: nearly every step is a block start, where the cache cannot save a forward). The three
engines live in one process and each configuration runs `--repeats` times, modes interleaved, so
the seqs/s ratios against no cache compare like with like; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from datetime import date
from pathlib import Path

import torch
from unmaskd.dllm import EMBEDDED_MODEL_DIR
from unmaskd.engine.loop import Engine
from unmaskd.evaluation.evaluate import evaluate_configs, parse_spec
from unmaskd.tasks.arithmetic import make_split

MODES = ("none", "prefix", "dual")
SPECS = ("topk_confidence", "threshold:threshold=0.9")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=EMBEDDED_MODEL_DIR)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--block-length", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    engines = {m: Engine.from_dir(args.model, cache=m) for m in MODES}
    problems = make_split("test", args.n)
    rows = []
    for spec in SPECS:
        (config,) = parse_spec(spec)
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        for _ in range(args.repeats):
            for mode in MODES:
                (row,) = evaluate_configs(engines[mode], problems, [config], args.block_length,
                                          None, args.batch_size, progress=False)
                runs[mode].append(row)
        base = statistics.median(r["seqs_per_s"] for r in runs["none"])
        for mode in MODES:
            row = {**runs[mode][0], "cache": mode,
                   "seqs_per_s": statistics.median(r["seqs_per_s"] for r in runs[mode])}
            row["speedup"] = row["seqs_per_s"] / base
            rows.append(row)
            lo, hi = row["ci95"]
            print(f"{spec:<26} {mode:<7} acc {row['accuracy']:.3f} ({lo:.3f}-{hi:.3f}) "
                  f"NFE {row['mean_nfe']:5.1f}  {row['seqs_per_s']:6.2f} seqs/s  "
                  f"{row['speedup']:.2f}x", flush=True)
    if args.json:
        meta = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
                "threads": args.threads, "n": args.n, "block_length": args.block_length,
                "batch_size": args.batch_size, "repeats": args.repeats,
                "model": str(args.model)}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
