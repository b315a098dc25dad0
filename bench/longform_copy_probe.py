"""Does a long-form model read its prompt? Teacher-forced copy probabilities (issue 19).

    python bench/longform_copy_probe.py --model runs/dllm-long/model --n 100

For each validation problem the reference answer is put on the canvas, EOS-padded, and every
answer position holding one kind of token is masked at once: the protagonist's name, the object
word, or the digits. The dLLM then sees the whole rest of the answer and the prompt, as at the
last steps of decoding, and we read the probability it gives the right token there. In the
suite's first version names and objects appeared in every line and had to be copied from the
prompt (the arithmetic suite's answers have neither); a model that does not read the prompt
stays near chance (1 / the number of names or objects). The current lines name neither, so the
probe reports digits only for them (a kind absent from every answer is left out). The
embedded arithmetic model is the control (`--model dllm/embedded`: its answers hold only
digits, copied from the prompt). Results: bench/results/longform-copy-probe.json.
"""

from __future__ import annotations

import torch
from probe_cli import probe_args, save_row
from unmaskd.dllm.checkpoint import load_dllm, read_task_file
from unmaskd.tasks import TASKS
from unmaskd.tasks.arithmetic import NAMES, OBJECTS


def probe(model, tok, problem, gen_length: int) -> dict[str, list[float]]:
    cfg = model.config
    prompt = tok(problem.prompt)["input_ids"]
    canvas = (tok(problem.answer)["input_ids"] + [cfg.eos_token_id] * gen_length)[:gen_length]
    name, obj = problem.question.split()[0], problem.question.split()[3].rstrip(".")
    kinds = {"name": set(tok(" " + name)["input_ids"]), "object": set(tok(" " + obj)["input_ids"]),
             "digits": {i for d in "0123456789" for i in tok(d)["input_ids"]}}
    out: dict[str, list[float]] = {}
    for kind, ids in kinds.items():
        where = [j for j, t in enumerate(canvas) if t in ids]
        if not where:
            continue
        x = torch.tensor([prompt + canvas])
        x[0, [len(prompt) + j for j in where]] = cfg.mask_token_id
        with torch.no_grad():
            probs = model(x, torch.ones_like(x, dtype=torch.bool))[0].softmax(-1)
        out[kind] = [probs[len(prompt) + j, canvas[j]].item() for j in where]
    return out


def main() -> None:
    args = probe_args("bench/results/longform-copy-probe.json", 100)
    model, tok = load_dllm(args.model)
    trained = read_task_file(args.model)  # none: the embedded arithmetic model, the control
    task, gen_length = trained.get("task", "arithmetic"), trained.get("gen_length", 48)
    found: dict[str, list[float]] = {}
    for problem in TASKS[task].make_split("validation", args.n):
        for kind, ps in probe(model, tok, problem, gen_length).items():
            found.setdefault(kind, []).extend(ps)
    row = {"model": str(args.model), "task": task, "n": args.n, "chance": {
        "name": 1 / len(NAMES), "object": 1 / len(OBJECTS), "digits": 0.1},
        **{kind: sum(ps) / len(ps) for kind, ps in found.items()}}
    save_row(args.out, row)


if __name__ == "__main__":
    main()
