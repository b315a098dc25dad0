"""The `unmaskd` command: generate, eval, serve, train-dllm, train-policy.

    unmaskd generate --prompt \\
        "Question: Sam has 9 eggs. Sam buys 4 more eggs. How many eggs does Sam have now?\\nAnswer:"
    unmaskd eval --split test --n 500 --sampler 'threshold:threshold=0.7|0.9'
    unmaskd serve --port 8000

`unmaskd COMMAND --help` describes a command. A sweep's `|` must be quoted (a shell reads it as
a pipe).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unmaskd.engine.model_args import (
    add_model_args,
    block_length_arg,
    engine_from_args,
    resolve_block_length,
)


def _param(text: str) -> tuple[str, object]:
    from unmaskd.evaluation.evaluate import _value

    key, eq, value = text.partition("=")
    if not eq:
        raise argparse.ArgumentTypeError(f"--param expects KEY=VALUE, got {text!r}")
    return key, _value(value)


def cmd_generate(argv: list[str]) -> int:
    from unmaskd.engine.sequence import GenerationRequest, InvalidRequest

    ap = argparse.ArgumentParser(prog="unmaskd generate")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--sampler", default="topk_confidence")
    ap.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--gen-length", type=int,
                    help="canvas (default: --default-gen-length)")
    ap.add_argument("--block-length", type=block_length_arg,
                    help="N or 'full' (default: the block length the folder's "
                         "unmaskd_task.json records, else gen length / 4; Dream: full)")
    steps = ap.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, help="step budget over the canvas, a multiple of "
                       "its blocks (default: one step per position)")
    steps.add_argument("--steps-per-block", type=int,
                       help="each block's step budget instead, whatever the prompt's length")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop-at-eos", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the full result object")
    ap.add_argument("--show-steps", action="store_true", help="print the canvas after each step")
    add_model_args(ap)
    args = ap.parse_args(argv)
    engine = engine_from_args(args)
    prompt = args.prompt.replace("\\n", "\n")
    req = GenerationRequest(
        prompt_ids=engine.tokenizer(prompt)["input_ids"], sampler=args.sampler,
        sampler_params=dict(args.param), gen_length=args.gen_length,
        block_length=resolve_block_length(
            args.block_length, args.gen_length or engine.default_gen_length),
        steps=args.steps, steps_per_block=args.steps_per_block, temperature=args.temperature,
        seed=args.seed, stop_at_eos=args.stop_at_eos, watch=args.show_steps)

    def show(report) -> None:
        for ev in report.events:
            print(f"step {ev.nfe:3d} +{len(ev.committed):2d} | {engine.render_canvas(ev.canvas)}")

    try:
        (result,) = engine.generate([req], on_step=show if args.show_steps else None)
    except InvalidRequest as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"sampler": args.sampler, **result.to_dict()}))
    else:
        print(result.text)
        print(f"[{result.nfe} steps, {result.tokens_per_step:.2f} tokens/step]", file=sys.stderr)
    return 0


def cmd_eval(argv: list[str]) -> int:
    from unmaskd.dllm.checkpoint import TASK_FILE, CheckpointError, read_task_file
    from unmaskd.engine.sequence import InvalidRequest
    from unmaskd.evaluation.evaluate import run_eval
    from unmaskd.tasks import TASKS, UnknownTask, get_task
    from unmaskd.tasks.jsonl import CHECKERS_HELP, DataError, checker_arg

    ap = argparse.ArgumentParser(prog="unmaskd eval")
    source = ap.add_mutually_exclusive_group()
    # default None, not "test": argparse lets `--data F --split test` pass when the value
    # given is the default
    source.add_argument("--split", choices=["train", "validation", "test"],
                        help="a split of the built-in task (default: test)")
    source.add_argument("--data", type=Path, metavar="FILE.jsonl",
                        help="your own problems instead: one JSON object per line with "
                             "'prompt' (text used as is) or 'messages' (chat, rendered by the "
                             "model's chat template) and 'answer' (the final answer, or a "
                             "solution ending in '#### N')")
    ap.add_argument("--task", choices=sorted(TASKS),
                    help="the built-in task (default: the one the model folder's "
                         "unmaskd_task.json names, with its canvas and blocks; else "
                         "arithmetic); longform's answers are written for a 256-token canvas "
                         "(--gen-length 256)")
    ap.add_argument("--checker", type=checker_arg, metavar="final-number|exact|regex:PATTERN",
                    help="with --data: " + CHECKERS_HELP)
    ap.add_argument("--n", type=int,
                    help="problems (default: 500 of a split, every line of --data)")
    ap.add_argument("--sampler", action="append", required=True, metavar="SPEC",
                    help="name or name:key=value,key=v1|v2 (a sweep: quote it, the shell "
                         "reads | as a pipe); repeatable")
    ap.add_argument("--block-length", type=block_length_arg,
                    help="N or 'full' (default: the task's, else gen length / 4; Dream: full)")
    ap.add_argument("--gen-length", type=int)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json", type=Path, help="results, rewritten after each configuration")
    ap.add_argument("--plot", type=Path)
    add_model_args(ap)
    args = ap.parse_args(argv)
    engine = engine_from_args(args)
    try:
        # a folder trained on a task names it and its canvas (training/dllm_trainer.py): the
        # defaults, unless --data or another --task asks for other problems
        trained = {} if args.data else read_task_file(args.model)
        if "task" in trained:  # a name from the folder: one of the suites?
            get_task(trained["task"], args.model / TASK_FILE)
        if args.task not in (None, trained.get("task")):
            trained = {}  # another task's problems: the model's canvas is not theirs
        gen_length = args.gen_length or trained.get("gen_length")
        block_length = resolve_block_length(args.block_length or trained.get("block_length"),
                                            gen_length or engine.default_gen_length)
        run_eval(engine, args.split or "test", args.n, args.sampler, block_length, gen_length,
                 args.json, args.plot, args.batch_size, data=args.data, checker=args.checker,
                 task=args.task or trained.get("task"))
    except (InvalidRequest, DataError, CheckpointError, UnknownTask) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


# The server and the trainers are imported when their command runs, not at start-up: `unmaskd
# generate` need not load FastAPI, and `unmaskd --help` answers at once.
def cmd_serve(argv: list[str]) -> int:
    from unmaskd.server.app import serve_main

    return serve_main(argv)


def cmd_train_dllm(argv: list[str]) -> int | None:
    from unmaskd.training.dllm_trainer import main as train_dllm

    return train_dllm(argv)


def cmd_train_policy(argv: list[str]) -> int:
    from unmaskd.training.policy_trainer import main as train_policy

    return train_policy(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {
        "generate": cmd_generate,
        "eval": cmd_eval,
        "serve": cmd_serve,
        "train-dllm": cmd_train_dllm,
        "train-policy": cmd_train_policy,
    }
    listing = "commands: " + ", ".join(commands)
    if argv and argv[0] in ("-h", "--help"):  # asked for: stdout, status 0, as argparse does
        print(__doc__.strip() + "\n\n" + listing)
        return 0
    if not argv:
        print(__doc__.strip() + "\n\n" + listing, file=sys.stderr)
        return 2
    if argv[0] not in commands:
        print(f"error: unknown command {argv[0]!r}\n{listing} (unmaskd --help for examples)",
              file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
