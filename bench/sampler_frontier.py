"""Accuracy vs NFE for every sampler on the test split, in block mode or full diffusion.

    python bench/sampler_frontier.py --setting block --n 500     # embedded model, blocks L/4
    python bench/sampler_frontier.py --setting full --n 500      # one block of length L
    python bench/sampler_frontier.py --model DIR --setting block --cache dual  # a long-form model
    python bench/sampler_frontier.py --model DIR --report   # its two claims (issue 19)

The model folder's unmaskd_task.json picks the task, canvas and block length (the embedded
model: arithmetic, 48 in blocks of 12; a long-form model: 256 in blocks of 32) and the
sweep below. Each sampler is swept over its main parameter; every learned policy trained for
the setting's block length gets a row at its serving defaults (`--specs
"learned:policy=NAME,beta=1|2" --append` adds dials). Runs through `unmaskd eval`
(evaluation/evaluate.py) and writes bench/results/<prefix>frontier-<setting>-<split>.{json,png,md}
(prefix `longform-` for the long model). `--report` reads both settings' test results and
writes <prefix>claims.md: learned minus the best heuristic at <= its NFE, and the EOS padding
each rule commits early (from the commit trace, `early_eos` in evaluation/evaluate.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from unmaskd.dllm import EMBEDDED_MODEL_DIR
from unmaskd.dllm.checkpoint import read_task_file
from unmaskd.engine.loop import Engine
from unmaskd.engine.model_args import load_policies
from unmaskd.evaluation.evaluate import format_table, plot_pareto, run_eval
from unmaskd.sampler_plugins.policy_store import STORE

# steps must be a multiple of the number of blocks (arithmetic: 4 blocks; longform: 8)
SWEEPS = {
    ("arithmetic", "block"): [
        "random:steps=48|12", "topk_confidence:steps=48|24|12|8|4",
        "margin:steps=48|12", "entropy:steps=48|12",
        "threshold:threshold=0.999|0.9|0.7|0.5", "factor:factor=0.01|1|4",
        "eb:gamma=0.001|0.1|1", "klass:conf=0.9|0.5,kl=0.01",
        "learned:beta=0.5|0.75|1|8",
    ],
    ("arithmetic", "full"): [
        "random:steps=48|12", "topk_confidence:steps=48|12|6",
        "margin:steps=48|12", "entropy:steps=48|12",
        "threshold:threshold=0.999|0.9|0.7|0.5", "factor:factor=0.01|1|4",
        "eb:gamma=0.001|0.1|1", "klass:conf=0.9|0.7|0.5,kl=0.01",
        "learned:beta=0.5|0.75|1|2",
    ],
    # the paper's geometry: from the 8-NFE floor of blocks of 32 up to one token per step
    # sized for 2 CPU cores: a full forward over 500 problems at L = 256 takes ~10 s, so the
    # block sweep runs with --cache dual and the 1-token/step rows are top-k's alone
    ("longform", "block"): [
        "random:steps=32", "topk_confidence:steps=256|32|16|8",
        "margin:steps=16", "entropy:steps=16",
        "threshold:threshold=0.9|0.7|0.5", "factor:factor=1|4",
        "eb:gamma=0.1|1", "klass:conf=0.9,kl=0.01",
    ],
    # does a confidence rule get worse with more steps once it commits padding first?
    ("longform", "full"): [
        "random:steps=16", "topk_confidence:steps=64|32|16|8",
        "margin:steps=16", "entropy:steps=16",
        "threshold:threshold=0.9|0.7|0.5", "factor:factor=1|4",
        "eb:gamma=0.1|1", "klass:conf=0.9,kl=0.01",
    ],
}
CLAIM_NFE = (8, 16)  # the paper's low-NFE range in block mode


def result_stem(out: Path, task: str, setting: str, split: str) -> Path:
    prefix = "" if task == "arithmetic" else f"{task}-"
    return out / f"{prefix}frontier-{setting}-{split}"


def learned_specs(task: str, setting: str, block_length: int) -> list[str]:
    """Arithmetic keeps its one default policy per setting (beta swept above); other tasks get
    a row per policy trained for this block length."""
    if task == "arithmetic":
        return []
    return [f"learned:policy={name}" for name, p in sorted(STORE.policies.items())
            if p.block_length == block_length]


def best_heuristic_at(rows: list[dict], nfe: float) -> dict | None:
    """The most accurate non-learned configuration using at most `nfe` steps on average."""
    fits = [r for r in rows if r["sampler"] != "learned" and r["mean_nfe"] <= nfe + 1e-9]
    return max(fits, key=lambda r: r["accuracy"], default=None)


def claims_report(stems: dict[str, Path]) -> str:
    """Markdown: learned vs the best heuristic at <= NFE, and early EOS per configuration."""
    lines = []
    for setting, stem in stems.items():
        path = stem.with_suffix(".json")
        if not path.exists():
            lines += [f"## {setting}: no results ({path} missing)", ""]
            continue
        rows = json.loads(path.read_text())["results"]
        lines += [f"## {setting} ({path.name}, n = {rows[0]['n'] if rows else 0})", "",
                  "| learned | acc | NFE | best heuristic at <= NFE | acc | NFE | difference |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted((r for r in rows if r["sampler"] == "learned"),
                        key=lambda r: r["mean_nfe"]):
            best = best_heuristic_at(rows, r["mean_nfe"])
            in_range = CLAIM_NFE[0] <= r["mean_nfe"] <= CLAIM_NFE[1]
            mark = "" if in_range else " (outside 8-16 NFE)"
            if best is None:
                lines.append(f"| {r['label']}{mark} | {100 * r['accuracy']:.1f}% | "
                             f"{r['mean_nfe']:.1f} | none that cheap | | | |")
                continue
            lines.append(
                f"| {r['label']}{mark} | {100 * r['accuracy']:.1f}% | {r['mean_nfe']:.1f} | "
                f"{best['label']} | {100 * best['accuracy']:.1f}% | {best['mean_nfe']:.1f} | "
                f"{100 * (r['accuracy'] - best['accuracy']):+.1f} points |")
        lines += ["", "| configuration | acc (95% CI) | NFE | early EOS commits | "
                  "text shorter than reference |", "|---|---|---|---|---|"]
        for r in rows:
            lo, hi = r["ci95"]
            short = r.get("shorter_than_reference")
            lines.append(f"| {r['label']} | {100 * r['accuracy']:.1f}% ({100 * lo:.1f}-"
                         f"{100 * hi:.1f}) | {r['mean_nfe']:.1f} | {r.get('early_eos', 0):.1f} | "
                         f"{'' if short is None else f'{100 * short:.1f}%'} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=EMBEDDED_MODEL_DIR)
    ap.add_argument("--setting", choices=["block", "full"])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--split", default="test")
    ap.add_argument("--cache", default="none", choices=["none", "prefix", "dual"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--only", nargs="*", help="sampler names to run (default: all)")
    ap.add_argument("--specs", nargs="*", help="run these SPECs instead of the built-in sweep")
    ap.add_argument("--append", action="store_true",
                    help="add the rows to an existing result instead of replacing it")
    ap.add_argument("--report", action="store_true",
                    help="write the claims report from both settings' results and stop")
    ap.add_argument("--rows-from", type=Path, metavar="JSON",
                    help="take the rows of another run of this script (same task, setting, "
                         "split, n and cache; e.g. part of a sweep run in another process) "
                         "instead of evaluating; with --append they join this result")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    trained = read_task_file(args.model)
    task = trained.get("task", "arithmetic")
    if args.report:
        stems = {s: result_stem(args.out, task, s, args.split) for s in ("block", "full")}
        prefix = "" if task == "arithmetic" else f"{task}-"
        (args.out / f"{prefix}claims-{args.split}.md").write_text(claims_report(stems))
        return
    if args.setting is None:
        ap.error("--setting is required (or --report)")
    torch.set_num_threads(args.threads)
    engine = Engine.from_dir(args.model, cache=args.cache)
    load_policies(args.model / "policies", args.model)
    L, trained_block = engine.default_canvas()
    block_length = trained_block if args.setting == "block" else L
    sweep = SWEEPS[(task, args.setting)] + learned_specs(task, args.setting, block_length)
    specs = args.specs or [s for s in sweep if not args.only or s.split(":")[0] in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = result_stem(args.out, task, args.setting, args.split)
    if args.rows_from:
        other = json.loads(args.rows_from.read_text())
        want = {"task": task, "split": args.split, "n": args.n, "block_length": block_length,
                "gen_length": L, "cache": args.cache}
        if {k: other.get(k) for k in want} != want:
            raise SystemExit(f"--rows-from {args.rows_from}: not a run of {want}")
        rows = other["results"]
    else:
        rows = run_eval(engine, args.split, args.n, specs, block_length, L, None, None,
                        batch_size=args.batch_size, task=task)
    if args.append and stem.with_suffix(".json").exists():
        old = json.loads(stem.with_suffix(".json").read_text())["results"]
        labels = {r["label"] for r in rows}
        rows = [r for r in old if r["label"] not in labels] + rows
        order = list(dict.fromkeys(s.split(":")[0] for s in sweep))
        rows.sort(key=lambda r: (order.index(r["sampler"]) if r["sampler"] in order
                                 else len(order), r["mean_nfe"]))
    stem.with_suffix(".json").write_text(json.dumps(
        {"task": task, "split": args.split, "n": args.n, "block_length": block_length,
         "gen_length": L, "cache": args.cache, "results": rows}, indent=2))
    mode = "full diffusion" if args.setting == "full" else f"block length {block_length}"
    plot_pareto(rows, stem.with_suffix(".png"),
                f"{task} {args.split} split, n={args.n}, {mode}, cache {args.cache}")
    stem.with_suffix(".md").write_text(format_table(rows) + "\n")


if __name__ == "__main__":
    main()
