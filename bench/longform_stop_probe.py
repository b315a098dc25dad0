"""Does a long-form model know where its answer ends? Teacher-forced stop decisions (issue 30).

    python bench/longform_stop_probe.py --model dllm/embedded-long --n 100

For each validation problem and each line break of its reference answer, the canvas holds the
reference up to that line break and masks after it, and we ask whether the dLLM's two most
likely tokens right after the break are the reference's: `\\n####` after the last line (stop
and give the answer), the next line's first tokens after a middle one (go on). Two contexts:
- `masked`: everything after the break is masked, as in left-to-right or block-wise decoding,
  where the model has to work out from the prompt how many lines the answer has;
- `padding visible`: the reference's EOS padding stays visible (only the rest of the answer is
  masked), as it nearly always is somewhere in a row of LLaDA's uniform-masking objective.
A model that scores well only with the padding visible reads the answer's length off the padding
instead of knowing it. Results: bench/results/longform-stop-probe.json.
"""

from __future__ import annotations

import torch
from probe_cli import probe_args, save_row
from unmaskd.dllm.checkpoint import load_dllm, read_task_file
from unmaskd.tasks import TASKS


def probe(model, tok, problem, gen_length: int) -> dict[str, dict[str, list[bool]]]:
    """{context: {"last": [hit], "middle": [hit, ...]}} for one problem."""
    cfg = model.config
    prompt = tok(problem.prompt)["input_ids"]
    answer = tok(problem.answer)["input_ids"]
    canvas = (answer + [cfg.eos_token_id] * gen_length)[:gen_length]
    lines = problem.answer.split("\n")
    out: dict[str, dict[str, list[bool]]] = {c: {"last": [], "middle": []}
                                             for c in ("masked", "padding visible")}
    for k in range(1, len(lines)):
        b = len(tok("\n".join(lines[:k]))["input_ids"])  # the break's '\n' is at b
        for context, hide_until in (("masked", gen_length), ("padding visible", len(answer))):
            x = torch.tensor([prompt + canvas])
            x[0, len(prompt) + b:len(prompt) + hide_until] = cfg.mask_token_id
            with torch.no_grad():
                logits = model(x, torch.ones_like(x, dtype=torch.bool))[0]
            pos = len(prompt) + b
            hit = logits[pos:pos + 2].argmax(-1).tolist() == canvas[b:b + 2]
            out[context]["last" if k == len(lines) - 1 else "middle"].append(hit)
    return out


def main() -> None:
    args = probe_args("bench/results/longform-stop-probe.json", 100)
    model, tok = load_dllm(args.model)
    gen_length = read_task_file(args.model).get("gen_length", 256)
    hits: dict[str, dict[str, list[bool]]] = {}
    for problem in TASKS["longform"].make_split("validation", args.n):
        for context, kinds in probe(model, tok, problem, gen_length).items():
            for kind, h in kinds.items():
                hits.setdefault(context, {}).setdefault(kind, []).extend(h)
    row = {"model": str(args.model), "n": args.n, **{
        f"{context}, after the {kind} line": f"{sum(h)}/{len(h)}"
        for context, kinds in hits.items() for kind, h in kinds.items()}}
    save_row(args.out, row)


if __name__ == "__main__":
    main()
