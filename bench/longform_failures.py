"""What does a long-form model get wrong? Each wrong answer sorted into one kind (issue 30).

    python bench/longform_failures.py --model dllm/embedded-long --n 50 [--cache dual]

Decodes validation problems greedily with top-k confidence at one token per step in blocks of
32 (256 NFE: the issue's measure of competence) and sorts every wrong answer by its first fault:
- `arithmetic`: a line `... a op b = c.` whose c is not a op b (the model read the operands and
  got the result wrong);
- `too few lines` / `too many lines`: the right steps, stopped early or late (where it ends);
- `other`: anything else (an operand that is not the previous result, a line for the wrong
  step, no `####`, ...).
Results: bench/results/longform-failures.json.
"""

from __future__ import annotations

import re

from probe_cli import probe_args, save_row
from unmaskd.engine.loop import Engine
from unmaskd.engine.sequence import GenerationRequest
from unmaskd.tasks import longform
from unmaskd.tasks.arithmetic import apply_op

EQUATION = re.compile(r"(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)\.")


def fault(text: str, reference: str) -> str:
    lines = [ln for ln in text.split("\n") if ln and not ln.startswith("####")]
    for line in lines:
        m = EQUATION.search(line)
        if m is None:
            return "other"
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if (op == "/" and (b == 0 or a % b)) or (op != "/" and apply_op(a, op, b) != c) \
                or (op == "/" and a // b != c):
            return "arithmetic"
    expected = reference.count("\n")  # the lines before `#### N`
    if "####" not in text:
        return "other"
    if len(lines) < expected:
        return "too few lines"
    if len(lines) > expected:
        return "too many lines"
    return "other"


def main() -> None:
    args = probe_args("bench/results/longform-failures.json", 50, cache=True)
    engine = Engine.from_dir(args.model, cache=args.cache)
    problems = longform.make_split("validation", args.n)
    reqs = [GenerationRequest(engine.tokenizer(p.prompt)["input_ids"], "topk_confidence", {},
                              gen_length=longform.GEN_LENGTH, block_length=32,
                              steps=longform.GEN_LENGTH) for p in problems]
    kinds: dict[str, int] = {}
    correct = 0
    for p, r in zip(problems, engine.generate(reqs)):
        if longform.check_answer(r.text, p.value):
            correct += 1
        else:
            kind = fault(r.text, p.answer)
            kinds[kind] = kinds.get(kind, 0) + 1
    row = {"model": str(args.model), "n": args.n, "cache": args.cache, "correct": correct,
           "wrong, by first fault": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}
    save_row(args.out, row)


if __name__ == "__main__":
    main()
