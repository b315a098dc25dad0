"""Offline evaluation of samplers on the task suite (`unmaskd eval`).

    unmaskd eval --split test --n 500 --sampler 'threshold:threshold=0.5|0.7|0.9' \\
        --sampler 'topk_confidence:steps=12|24|48' --json out.json --plot out.png

A SPEC is `name` or `name:key=value,key=value`; `key=v1|v2|v3` sweeps a key. `steps` is the
generation's step budget and `steps_per_block` each block's, every other key a sampler
parameter. Each configuration runs batched
through the engine over the same problems; the table gives accuracy with a 95% Wilson interval,
mean NFE (and mean NFE had decoding stopped at EOS, derived exactly from the trace), tokens per
step and sequences per second. `--plot` draws accuracy (with its interval bar) against mean
NFE, one line per sampler and dial, each point labelled with the dial's value (`_lines`).
`--task` picks the built-in suite (tasks/: arithmetic, the default, or longform); `--data
FILE.jsonl` replaces it with your own problems (`tasks/jsonl.py`).

Every request of every configuration is validated before the first problem runs, and `--json`
is rewritten after each finished configuration, so a stopped run keeps what it finished.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm
from unmaskd.engine.loop import Engine
from unmaskd.engine.sequence import GenerationRequest, InvalidRequest
from unmaskd.engine.stats import wilson_interval
from unmaskd.tasks import TASKS
from unmaskd.tasks.arithmetic import check_answer
from unmaskd.tasks.jsonl import DEFAULT_CHECKER, DataError, load_jsonl, make_checker

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_N = 500  # problems of a built-in split when --n is not given


@dataclass
class Config:
    sampler: str
    params: dict
    steps: int | None = None
    steps_per_block: int | None = None

    @property
    def label(self) -> str:
        items = ([f"steps={self.steps}"] if self.steps is not None else [])
        items += ([f"steps_per_block={self.steps_per_block}"]
                  if self.steps_per_block is not None else [])
        items += [f"{k}={v}" for k, v in self.params.items()]
        return f"{self.sampler}:{','.join(items)}" if items else self.sampler


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_spec(spec: str) -> list[Config]:
    """`name:key=a|b,other=c` -> one Config per point of the sweep's grid."""
    name, _, rest = spec.partition(":")
    if not name:
        raise InvalidRequest("sampler", f"empty sampler name in spec {spec!r}")
    axes: list[tuple[str, list]] = []
    for item in filter(None, rest.split(",")):
        key, eq, values = item.partition("=")
        if not eq or not key or not values:
            raise InvalidRequest("sampler", f"bad item {item!r} in spec {spec!r} "
                                 "(expected key=value or key=v1|v2)")
        axes.append((key.strip(), [_value(v.strip()) for v in values.split("|")]))
    configs = []
    for point in itertools.product(*(values for _, values in axes)):
        params = dict(zip((k for k, _ in axes), point))
        steps = params.pop("steps", None)
        configs.append(Config(name, params, steps, params.pop("steps_per_block", None)))
    return configs


def nfe_if_stopped_at_eos(token_ids: list[int], trace: list[int], nfe: int, eos: int) -> int:
    """The NFE the same run would have used with stop_at_eos: the first step after which
    every position before the first committed EOS is committed. Decisions before that step
    are identical with or without the option, so this is exact."""
    order = sorted(range(len(trace)), key=lambda i: trace[i])
    committed = [False] * len(trace)
    i = 0
    for step in range(nfe):
        while i < len(order) and trace[order[i]] <= step:
            committed[order[i]] = True
            i += 1
        first = next((p for p in range(len(trace)) if committed[p] and token_ids[p] == eos), None)
        if first is not None and all(committed[:first]):
            return step + 1
    return nfe


def early_eos(token_ids: list[int], trace: list[int], eos: int) -> int:
    """EOS padding committed while a position before it was still masked: the padding decided
    before the text it ends (what confidence rules do first on a long canvas)."""
    first_masked_after: list[int] = []  # per position: the step the last earlier one was filled
    latest = -1
    for step in trace:
        first_masked_after.append(latest)
        latest = max(latest, step)
    return sum(1 for tok, step, before in zip(token_ids, trace, first_masked_after)
               if tok == eos and step < before)


def shorter_than_reference(token_ids: list[int], reference_tokens: int, eos: int) -> bool:
    """The answer's text (up to its first EOS) is shorter than the reference solution's: on the
    built-in tasks, whose solutions have one fixed form, a sign that padding cut it off."""
    length = token_ids.index(eos) if eos in token_ids else len(token_ids)
    return length < reference_tokens


def evaluate_configs(engine: Engine, problems, configs: list[Config], block_length: int | None,
                     gen_length: int | None, batch_size: int = 128, progress: bool = True,
                     check: Callable[[str, object], bool] = check_answer,
                     on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per configuration. `problems` have `.prompt` and `.value` (the reference that
    `check(text, value)` scores against); built-in ones also a difficulty level `.steps`.
    `on_row` sees each row as soon as its configuration finishes."""
    tok = engine.tokenizer
    prompts = [tok(p.prompt)["input_ids"] for p in problems]
    # built-in problems carry their worked solution; --data ones may hold only the final answer
    reference_tokens = [len(tok(p.answer)["input_ids"]) if hasattr(p, "steps") else 0
                        for p in problems]
    batches = [[GenerationRequest(prompt_ids=ids, sampler=cfg.sampler, sampler_params=cfg.params,
                                  gen_length=gen_length, block_length=block_length,
                                  steps=cfg.steps, steps_per_block=cfg.steps_per_block, seed=i)
                for i, ids in enumerate(prompts)]
               for cfg in configs]
    # a bad configuration found after hours of good ones would throw their work away
    for cfg, reqs in zip(configs, batches):
        for req in reqs:
            try:
                engine.validate(req)
            except InvalidRequest as e:
                raise InvalidRequest(e.field, f"{e.message} (in {cfg.label})") from None
    rows = []
    bar = tqdm(total=len(configs) * len(problems), desc="eval", disable=not progress)
    for cfg, reqs in zip(configs, batches):
        t0 = time.perf_counter()
        results = engine.generate(reqs, max_batch_size=batch_size,
                                  on_step=lambda r: bar.update(len(r.finished)))
        elapsed = time.perf_counter() - t0
        correct = [check(r.text, p.value) for r, p in zip(results, problems)]
        k, n = sum(correct), len(correct)
        lo, hi = wilson_interval(k, n)
        nfe = [r.nfe for r in results]
        nfe_eos = [nfe_if_stopped_at_eos(r.token_ids, r.trace, r.nfe, engine.eos_id)
                   for r in results]
        early = [early_eos(r.token_ids, r.trace, engine.eos_id) for r in results]
        short = [shorter_than_reference(r.token_ids, n_ref, engine.eos_id)
                 for r, n_ref in zip(results, reference_tokens) if n_ref]
        by_level: dict[int, list[bool]] = {}
        for p, c in zip(problems, correct):
            if getattr(p, "steps", None) is not None:  # --data problems have no level
                by_level.setdefault(p.steps, []).append(c)
        rows.append({
            "label": cfg.label, "sampler": cfg.sampler, "params": cfg.params,
            "steps": engine.validate(reqs[0]).steps,
            "steps_per_block": engine.validate(reqs[0]).steps_per_block,
            "n": n, "accuracy": k / n, "ci95": [lo, hi],
            "accuracy_by_level": {lvl: sum(v) / len(v) for lvl, v in sorted(by_level.items())},
            "mean_nfe": sum(nfe) / n, "mean_nfe_stop_at_eos": sum(nfe_eos) / n,
            "tokens_per_step": sum(r.gen_length / r.nfe for r in results) / n,
            "early_eos": sum(early) / n,
            "shorter_than_reference": sum(short) / len(short) if short else None,
            "seqs_per_s": n / elapsed,
        })
        if on_row is not None:
            on_row(rows[-1])
    bar.close()
    return rows


def evaluate_spec(model_dir, split: str, n: int, spec: str, block_length: int | None = None,
                  steps: int | None = None, gen_length: int | None = None,
                  task: str = "arithmetic") -> dict:
    """One configuration on one split of a task (used by the dLLM trainer's validation)."""
    engine = Engine.from_dir(model_dir)
    configs = parse_spec(spec)
    for c in configs:
        c.steps = c.steps or steps
    suite = TASKS[task]
    return evaluate_configs(engine, suite.make_split(split, n), configs[:1], block_length,
                            gen_length, progress=False, check=suite.check_answer)[0]


def format_table(rows: list[dict]) -> str:
    head = ("| sampler | accuracy (95% CI) | mean NFE | NFE w/ stop_at_eos | tokens/step "
            "| seqs/s |\n|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lo, hi = r["ci95"]
        lines.append(f"| {r['label']} | {100 * r['accuracy']:.1f}% ({100 * lo:.1f}-{100 * hi:.1f})"
                     f" | {r['mean_nfe']:.1f} | {r['mean_nfe_stop_at_eos']:.1f} "
                     f"| {r['tokens_per_step']:.2f} | {r['seqs_per_s']:.1f} |")
    return "\n".join(lines)


def _is_dial(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dials(rows: list[dict]) -> dict[str, list]:
    """Per parameter of these rows (and `steps`), the distinct values they use."""
    values: dict[str, list] = {}
    for r in rows:
        for key, value in [*r["params"].items(), ("steps", r["steps"])]:
            seen = values.setdefault(key, [])
            if value not in seen:
                seen.append(value)
    return values


def _lines(rows: list[dict]) -> list[list[dict]]:
    """The Pareto plot's lines. Rows share a line when they have the same sampler, name the
    same parameters and agree on those that are not numbers (a policy's name): `learned` and
    `learned:beta=2`, or two policies, are separate lines. Along a line one number varies,
    its dial; where rows differ in several (a grid such as `klass:conf=0.5|0.9,kl=0.01|0.1`)
    the one with the most values is the dial and each value of the others is its own line."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        names = tuple(sorted((k, str(v)) for k, v in r["params"].items() if not _is_dial(v)))
        groups.setdefault((r["sampler"], tuple(sorted(r["params"])), names), []).append(r)
    lines: list[list[dict]] = []
    for group in groups.values():
        values = _dials(group)
        varying = [k for k, vs in values.items() if len(vs) > 1]
        dial = max(varying, key=lambda k: len(values[k]), default=None)  # first on ties
        split: dict[tuple, list[dict]] = {}
        for r in group:
            point = {**r["params"], "steps": r["steps"]}
            split.setdefault(tuple(point[k] for k in varying if k != dial), []).append(r)
        lines += split.values()
    return lines


def pareto_figure(rows: list[dict], title: str) -> Figure:
    """Accuracy (with its 95% Wilson interval) against mean NFE, one line per `_lines`. A
    line is named as a SPEC (`threshold:threshold=0.5|0.9`) and each of its points is
    labelled with its dial's value (`0.5`); a line of one point is named by its row's label.
    The y axis starts at 0."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5))
    ax = fig.subplots()
    ax.set_prop_cycle(color=colormaps["tab20"].colors)  # more lines than the default 10 colours
    for members in _lines(rows):
        members = sorted(members, key=lambda r: r["mean_nfe"])
        values = _dials(members)
        dial = next((k for k, vs in values.items() if len(vs) > 1), None)
        name = members[0]["label"]
        if dial is not None:
            items = [f"{k}={'|'.join(str(v) for v in sorted(vs))}" for k, vs in values.items()
                     if k != "steps" or k == dial]
            name = f"{members[0]['sampler']}:{','.join(items)}"
        x = [r["mean_nfe"] for r in members]
        y = [100 * r["accuracy"] for r in members]
        below = [max(0.0, 100 * (r["accuracy"] - r["ci95"][0])) for r in members]
        above = [max(0.0, 100 * (r["ci95"][1] - r["accuracy"])) for r in members]
        ax.errorbar(x, y, yerr=[below, above], marker="o", capsize=3, linewidth=1.2,
                    elinewidth=0.8, label=name)
        if dial is not None:
            for r, xi, yi in zip(members, x, y):
                value = r["steps"] if dial == "steps" else r["params"][dial]
                ax.annotate(str(value), (xi, yi), xytext=(4, 3), textcoords="offset points",
                            fontsize=7)
    # an accuracy is never negative; the top leaves room above the highest interval
    ax.set_ylim(0, min(100.0, 100 * max(r["ci95"][1] for r in rows) + 5))
    ax.set_xlabel("mean NFE (denoising steps)")
    ax.set_ylabel("accuracy (%), 95% Wilson interval")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot_pareto(rows: list[dict], path: Path, title: str) -> None:
    pareto_figure(rows, title).savefig(path, dpi=120)


def run_eval(engine: Engine, split: str, n: int | None, specs: list[str],
             block_length: int | None, gen_length: int | None, json_path: Path | None,
             plot_path: Path | None, batch_size: int, data: Path | None = None,
             checker: str | None = None, task: str | None = None) -> list[dict]:
    """The built-in `split` of `task` (default arithmetic; n problems, default DEFAULT_N), or
    the first n (default: all) problems of a `data` file scored by `checker`. Raises
    InvalidRequest or DataError before any problem runs."""
    configs = [c for spec in specs for c in parse_spec(spec)]
    canvas = gen_length or engine.default_gen_length
    if data is not None:
        if task is not None:
            raise DataError("--task names a built-in task; --data brings its own problems")
        checker = checker or DEFAULT_CHECKER
        problems = load_jsonl(data, engine.tokenizer, checker,
                              engine.cfg.max_sequence_length - canvas)[:n]
        check, source = make_checker(checker), {"data": str(data), "checker": checker}
        title = data.name
    else:
        if checker is not None:
            raise DataError("--checker scores --data files; the built-in task keeps its own")
        task = task or "arithmetic"
        problems = TASKS[task].make_split(split, n or DEFAULT_N)
        check, source = TASKS[task].check_answer, {"task": task, "split": split}
        title = f"{split} split" if task == "arithmetic" else f"{task} {split} split"
    rows: list[dict] = []

    def save(row: dict) -> None:
        rows.append(row)
        if json_path:  # rewritten whole (and atomically) after each configuration
            tmp = json_path.with_name(json_path.name + ".tmp")
            tmp.write_text(json.dumps({
                **source, "n": len(problems), "block_length": block_length,
                "gen_length": gen_length, "complete": len(rows) == len(configs),
                "results": rows}, indent=2))
            tmp.replace(json_path)

    evaluate_configs(engine, problems, configs, block_length, gen_length, batch_size,
                     check=check, on_row=save)
    print(format_table(rows))
    if plot_path:
        block = block_length or engine.default_canvas(canvas)[1]
        bl = "full diffusion" if block == canvas else f"block length {block}"
        plot_pareto(rows, plot_path, f"{title}, n={len(problems)}, {bl}")
    return rows
