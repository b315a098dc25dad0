"""Does a long-form model know its arithmetic? Teacher-forced result digits (issue 30).

    python bench/longform_digit_probe.py --model dllm/embedded-long --n 60

For each line `... a op b = c.` of a validation answer, the canvas holds the reference up to
`= ` and masks everything from c on, as block-wise decoding leaves it when c is next. For a
two-digit c we read the greedy prediction of both digits at once (`joint`), of each alone, and
of each with the other one given; for a one-digit c, that digit. A model that is wrong with the
operands in front of it does not know the arithmetic; one that is right here but wrong when it
decodes (bench/longform_failures.py) goes wrong in the order it writes digits in.
Results: bench/results/longform-digit-probe.json.
"""

from __future__ import annotations

import re

import torch
from probe_cli import probe_args, save_row
from unmaskd.dllm.checkpoint import load_dllm, read_task_file
from unmaskd.tasks import TASKS

RESULT = re.compile(r"= (\d+)\.$")
KINDS = ("joint", "tens alone", "units alone", "tens given units", "units given tens",
         "one-digit result")


def greedy(model, x: torch.Tensor) -> list[int]:
    """The argmax token of every column of one row."""
    with torch.no_grad():
        return model(x, torch.ones_like(x, dtype=torch.bool))[0].argmax(-1).tolist()


def probe(model, tok, problem, gen_length: int) -> dict[str, list[bool]]:
    cfg = model.config
    prompt = tok(problem.prompt)["input_ids"]
    lines = problem.answer.split("\n")[:-1]  # the `#### N` line restates the last result
    hits: dict[str, list[bool]] = {k: [] for k in KINDS}
    for k, line in enumerate(lines):
        m = RESULT.search(line)
        before = tok("\n".join(lines[:k] + [line[:m.start(1)]]))["input_ids"]
        upto = tok("\n".join(lines[:k + 1]))["input_ids"]
        digits = upto[len(before):len(before) + len(m.group(1))]
        canvas = torch.tensor([prompt + before + [cfg.mask_token_id] * (gen_length - len(before))])
        at = len(prompt) + len(before)

        if len(digits) == 1:
            hits["one-digit result"].append(greedy(model, canvas)[at] == digits[0])
            continue
        if len(digits) != 2:
            continue
        both = greedy(model, canvas)
        hits["joint"].append(both[at:at + 2] == digits)
        hits["tens alone"].append(both[at] == digits[0])
        hits["units alone"].append(both[at + 1] == digits[1])
        for given, asked, kind in ((1, 0, "tens given units"), (0, 1, "units given tens")):
            x = canvas.clone()
            x[0, at + given] = digits[given]
            hits[kind].append(greedy(model, x)[at + asked] == digits[asked])
    return hits


def main() -> None:
    args = probe_args("bench/results/longform-digit-probe.json", 60)
    model, tok = load_dllm(args.model)
    gen_length = read_task_file(args.model).get("gen_length", 256)
    hits: dict[str, list[bool]] = {k: [] for k in KINDS}
    for problem in TASKS["longform"].make_split("validation", args.n):
        for kind, h in probe(model, tok, problem, gen_length).items():
            hits[kind].extend(h)
    save_row(args.out, {"model": str(args.model), "n": args.n,
                        **{kind: f"{sum(h)}/{len(h)}" for kind, h in hits.items()}})


if __name__ == "__main__":
    main()
