"""Where the embedded dLLM goes wrong: each failed test problem sorted into one cause.

    python bench/dllm_errors.py --n 500          # top-k, 1 token/step, blocks of L/4

A failure is put in the first of these that applies, reading the worked answer line by line
against the reference: the answer has the wrong number of lines (`line count`); a line is not
`a op b = c.` (`malformed`); a line copies an operand or operation wrong (`operands`); a line
has the right operands and a wrong result (`arithmetic`, by operation); else `final line`
(every step right, the `#### N` line wrong). A second table splits every line whose operands
were copied right by operation and by whether its (value, op, operand) step was held out of
training (test only): memorised facts against generalisation. Both go to stdout in markdown.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

import torch
from unmaskd.dllm import EMBEDDED_MODEL_DIR
from unmaskd.engine.loop import Engine
from unmaskd.engine.sequence import GenerationRequest
from unmaskd.tasks.arithmetic import check_answer, is_held_out, make_split

LINE = re.compile(r"^\s*(\d+) ([-+*/]) (\d+) = (\d+)\.\s*$")


def step_lines(answer: str) -> list[str]:
    """The worked lines of an answer, without its `#### N` line."""
    return [ln for ln in answer.strip().split("\n") if not ln.startswith("####")]


def cause(answer: str, reference: str) -> str:
    got, ref = step_lines(answer), step_lines(reference)
    if len(got) != len(ref):
        return "line count"
    for line, want in zip(got, ref):
        m, w = LINE.match(line), LINE.match(want)
        if m is None:
            return "malformed"
        if m.groups()[:3] != w.groups()[:3]:
            return "operands"
        if m.group(4) != w.group(4):
            return f"arithmetic {w.group(2)}"
    return "final line"


def line_results(answer: str, reference: str) -> list[tuple[str, bool, bool]]:
    """(op, held out of training, result right) for each line whose operands are right."""
    out = []
    for line, want in zip(step_lines(answer), step_lines(reference)):
        m, w = LINE.match(line), LINE.match(want)
        if m is not None and m.groups()[:3] == w.groups()[:3]:
            x, op, y, z = w.groups()
            out.append((op, is_held_out(int(x), op, int(y)), m.group(4) == z))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.from_dir(EMBEDDED_MODEL_DIR)
    problems = make_split("test", args.n)
    # the engine's defaults: canvas L, blocks of L/4, L steps (1 token/step)
    requests = [GenerationRequest(engine.tokenizer(p.prompt)["input_ids"], "topk_confidence")
                for p in problems]
    results = engine.generate(requests)
    correct = [check_answer(r.text, p.value) for p, r in zip(problems, results)]
    causes = Counter(cause(r.text, p.answer) for p, r, ok in zip(problems, results, correct)
                     if not ok)
    failed = sum(causes.values())
    print(f"{args.n} test problems, {failed} failed ({100 * failed / args.n:.1f}%)\n")
    print("| cause | failures | share of failures |\n|---|---|---|")
    for name, count in causes.most_common():
        print(f"| {name} | {count} | {100 * count / failed:.0f}% |")

    seen = [ok for p, ok in zip(problems, correct) if not p.unseen]
    unseen = [ok for p, ok in zip(problems, correct) if p.unseen]
    print(f"\nproblems with only trained steps: {sum(seen)}/{len(seen)} right; with a held-out "
          f"step: {sum(unseen)}/{len(unseen)} right\n")
    lines = Counter()
    right = Counter()
    for p, r in zip(problems, results):
        for op, held_out, ok in line_results(r.text, p.answer):
            lines[op, held_out] += 1
            right[op, held_out] += ok
    print("| op | trained steps right | held-out steps right |\n|---|---|---|")
    for op in "+-*/":
        cells = [f"{right[op, h]}/{lines[op, h]} ({100 * right[op, h] / max(1, lines[op, h]):.0f}%)"
                 for h in (False, True)]
        print(f"| {op} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
