"""Where the embedded dLLM goes wrong: each failed test problem sorted into one cause.

    python bench/dllm_errors.py --n 500          # top-k, 1 token/step, blocks of L/4

A failure is put in the first of these that applies, reading the worked answer line by line
against the reference: the answer has the wrong number of lines (`line count`); a line is not
`a op b = c.` (`malformed`); a line copies an operand or operation wrong (`operands`); a line
has the right operands and a wrong result (`arithmetic`, by operation); else `final line`
(every step right, the `#### N` line wrong). The table goes to stdout in markdown.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

import torch

from dllm import EMBEDDED_MODEL_DIR
from server.engine import Engine
from server.sequence import GenerationRequest
from tasks.arithmetic import check_answer, make_split

LINE = re.compile(r"^\s*(\d+) ([-+*/]) (\d+) = (\d+)\.\s*$")


def cause(answer: str, reference: str) -> str:
    got = [ln for ln in answer.strip().split("\n") if not ln.startswith("####")]
    ref = reference.split("\n")[:-1]
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
    causes = Counter(cause(r.text, p.answer) for p, r in zip(problems, results)
                     if not check_answer(r.text, p.value))
    failed = sum(causes.values())
    print(f"{args.n} test problems, {failed} failed ({100 * failed / args.n:.1f}%)\n")
    print("| cause | failures | share of failures |\n|---|---|---|")
    for name, count in causes.most_common():
        print(f"| {name} | {count} | {100 * count / failed:.0f}% |")


if __name__ == "__main__":
    main()
