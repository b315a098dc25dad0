"""Engine and sampler overhead per denoising step, as a fraction of the dLLM forward.

    python bench/engine_overhead.py [--model DIR] [--threads 2] [--json out.json]

For batch sizes 1 and 32 and every sampler, decodes the same validation prompts and splits each
step's wall time into the dLLM forward (StepReport.forward_s) and everything else the engine does
(confidence statistics, the sampler, commit, bookkeeping). Overhead = (step - forward) / forward,
measured in the same process for every sampler, so ratios are comparable.
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
from unmaskd.dllm import EMBEDDED_MODEL_DIR
from unmaskd.engine.loop import Engine
from unmaskd.engine.sequence import GenerationRequest
from unmaskd.sampler_plugins.policy_store import STORE, model_fingerprint
from unmaskd.tasks.arithmetic import make_split

SAMPLERS = ["random", "topk_confidence", "threshold", "factor", "margin", "entropy", "eb", "klass",
            "learned"]


def measure(engine: Engine, sampler: str, batch: int, repeats: int) -> dict:
    prompts = [engine.tokenizer(p.prompt)["input_ids"] for p in make_split("validation", batch)]
    steps, forwards, samplers = [], [], []
    for rep in range(repeats):
        for ids in prompts:
            engine.add(GenerationRequest(ids, sampler, seed=rep))
        while engine.active:
            t0 = time.perf_counter()
            report = engine.step()
            steps.append(time.perf_counter() - t0)
            forwards.append(report.forward_s)
            samplers.append(report.sampler_s)
    step, fwd = statistics.median(steps), statistics.median(forwards)
    return {"sampler": sampler, "batch": batch, "forward_ms": 1e3 * fwd, "step_ms": 1e3 * step,
            "sampler_ms": 1e3 * statistics.median(samplers), "overhead": (step - fwd) / fwd}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=EMBEDDED_MODEL_DIR)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.from_dir(args.model)
    STORE.load_dir(args.model / "policies", model_fingerprint(args.model))
    samplers = [s for s in SAMPLERS if s != "learned" or STORE.policies]
    rows = [measure(engine, s, b, args.repeats) for b in (1, 32) for s in samplers]
    print(f"# engine overhead, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, torch {torch.__version__}, {date.today()}")
    print("| sampler | batch | forward ms | step ms | sampler ms | overhead / forward |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['batch']} | {r['forward_ms']:.1f} | {r['step_ms']:.1f} "
              f"| {r['sampler_ms']:.2f} | {100 * r['overhead']:.1f}% |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
