"""Accuracy vs NFE for every sampler on the test split, in block mode or full diffusion.

    python bench/sampler_frontier.py --setting block --n 500     # block length L/4
    python bench/sampler_frontier.py --setting full --n 500      # one block of length L

Each sampler is swept over its main parameter (two to four points: the sweep is sized to run
in about 30 minutes per setting on one core of a 2-core CPU at n=500). `learned` rows use the
default policy for the setting; `--specs "learned:policy=NAME,beta=1|2" --append` adds others. Runs
through `unmaskd eval` (server/evaluate.py) on the embedded model and writes
bench/results/frontier-<setting>.{json,png,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from unmaskd.dllm import EMBEDDED_MODEL_DIR
from unmaskd.engine.evaluate import format_table, plot_pareto, run_eval
from unmaskd.engine.loop import Engine
from unmaskd.engine.model_args import load_policies

L = 48
# steps must be a multiple of the number of blocks: 4 in block mode, 1 in full diffusion
SWEEPS = {
    "block": [
        "random:steps=48|12", "topk_confidence:steps=48|24|12|8|4",
        "margin:steps=48|12", "entropy:steps=48|12",
        "threshold:threshold=0.999|0.9|0.7|0.5", "factor:factor=0.01|1|4",
        "eb:gamma=0.001|0.1|1", "klass:conf=0.9|0.5,kl=0.01",
        "learned:beta=0.5|0.75|1|8",
    ],
    "full": [
        "random:steps=48|12", "topk_confidence:steps=48|12|6",
        "margin:steps=48|12", "entropy:steps=48|12",
        "threshold:threshold=0.999|0.9|0.7|0.5", "factor:factor=0.01|1|4",
        "eb:gamma=0.001|0.1|1", "klass:conf=0.9|0.7|0.5,kl=0.01",
        "learned:beta=0.5|0.75|1|2",
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", choices=sorted(SWEEPS), required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="sampler names to run (default: all)")
    ap.add_argument("--specs", nargs="*", help="run these SPECs instead of the built-in sweep")
    ap.add_argument("--append", action="store_true",
                    help="add the rows to an existing result instead of replacing it")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.from_dir(EMBEDDED_MODEL_DIR, default_gen_length=L)
    load_policies(EMBEDDED_MODEL_DIR / "policies", EMBEDDED_MODEL_DIR)
    specs = args.specs or [s for s in SWEEPS[args.setting]
                           if not args.only or s.split(":")[0] in args.only]
    block_length = L // 4 if args.setting == "block" else L
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"frontier-{args.setting}-{args.split}"
    rows = run_eval(engine, args.split, args.n, specs, block_length, L, None, None,
                    batch_size=128)
    if args.append and stem.with_suffix(".json").exists():
        old = json.loads(stem.with_suffix(".json").read_text())["results"]
        labels = {r["label"] for r in rows}
        rows = [r for r in old if r["label"] not in labels] + rows
        order = list(dict.fromkeys(s.split(":")[0] for s in SWEEPS[args.setting]))
        rows.sort(key=lambda r: (order.index(r["sampler"]) if r["sampler"] in order
                                 else len(order), r["mean_nfe"]))
    stem.with_suffix(".json").write_text(json.dumps(
        {"split": args.split, "n": args.n, "block_length": block_length, "gen_length": L,
         "results": rows}, indent=2))
    mode = "full diffusion" if args.setting == "full" else f"block length {block_length}"
    plot_pareto(rows, stem.with_suffix(".png"), f"{args.split} split, n={args.n}, {mode}")
    stem.with_suffix(".md").write_text(format_table(rows) + "\n")


if __name__ == "__main__":
    main()
