"""Long-form multi-step word problems for a 256-token canvas (issue 19), deterministic by seed.

    python -m unmaskd.tasks.longform --split train --n 3   # prints examples

A problem is a story about one person and one kind of object that takes 1 to 4 steps (values in
1..99: add, subtract, multiply, divide evenly), with a distractor sentence in a third of them.
The worked answer is one explanation line per step, as GSM8K solutions are: a short phrase
that names the event, then the equation (`Buying 12 more: 34 + 12 = 46.`), then `#### N`.
That is 18 to 100 tokens (embedded tokenizer), EOS-padded to a 256-token canvas (GEN_LENGTH),
so most of the canvas is padding and how much is not known in advance.

What makes it hard for parallel decoding, as GSM8K is at L = 256 in the paper:
- The answer length is uncertain from the prompt. A sentence can cost 0 steps (a distractor
  about someone or something else), 1 step, or 2 (`buys 3 bags with 4 apples in each`: a
  product, then a sum), so the number of sentences does not tell the number of lines.
- The tail of the canvas is EOS with near-certainty, so confidence-driven samplers commit
  padding first; committed EOS too early cuts the last lines and the `#### N` off, which the
  checker scores wrong (it reads only the number after `####`, never an intermediate one).
- Later lines depend on earlier results (the chain), so unmasking many positions at once
  guesses numbers before the values they depend on exist.

Why lines do not restate who and what, and why at most 4 steps: a first version did both
(`After buying 12 more, Ava has 34 + 12 = 46 apples.`, up to 8 steps) and no model of the
embedded size learned it in the issue's 150 CPU-minutes: it never found the protagonist's name
among the sentences, and it wrote 9-11 lines whatever the problem (docs/BENCHMARKS.md). The
geometry the paper measures (short answers of uncertain length on a long canvas) does not need
either.

Splits never overlap, as in tasks/arithmetic.py: each split draws from its own seed range and
keeps only questions whose text hash falls into its own bucket. A "held-out" step is a
(value, op, operand) triple whose hash is 0 mod 8 (the products inside two-step sentences
included): train and validation problems are generated avoiding them, test is drawn freely, so
its longer problems often use some combination never seen in training (`Problem.unseen`).
"""

from __future__ import annotations

import argparse
import random
import re

from unmaskd.tasks.arithmetic import (
    MAX_VALUE,
    NAMES,
    OBJECTS,
    SPLIT_SEED_BASE,
    Problem,
    apply_op,
    draw_split,
    next_step,
    stable_hash,
)

GEN_LENGTH = 256  # the answer canvas L, as in the paper's GSM8K setting
MAX_STEPS = 4
# Distractors: sentences that cost no step, so the sentence count does not give the length.
OTHER_THINGS = ["hats", "dogs", "plates", "chairs", "kites", "cups"]


def is_held_out(value: int, op: str, operand: int) -> bool:
    # salted, so the held-out set is not the arithmetic suite's
    return stable_hash(f"longform{value}{op}{operand}") % 8 == 0


def _group(rng: random.Random, x: int) -> tuple[str, int, int] | None:
    """A two-step sentence: `a` groups of `b` added to or taken from x, or None if none fits."""
    op = rng.choice("+-")
    room = MAX_VALUE - x if op == "+" else x - 1
    pairs = [(a, b) for a in range(2, 10) for b in range(2, 10) if a * b <= room]
    return (op, *rng.choice(pairs)) if pairs else None


def _simple_text(rng: random.Random, op: str, x: int, y: int, name: str, obj: str
                 ) -> tuple[str, str]:
    """(question sentence, explanation line) of a one-step event."""
    other = rng.choice([n for n in NAMES if n != name])
    eq = f"{x} {op} {y} = {apply_op(x, op, y)}."
    options = {
        "+": [(f"{name} buys {y} more {obj}.", f"Buying {y} more: {eq}"),
              (f"{other} gives {name} {y} {obj}.", f"Getting {y}: {eq}")],
        "-": [(f"{name} gives {y} {obj} to {other}.", f"Giving away {y}: {eq}"),
              (f"{name} loses {y} {obj}.", f"Losing {y}: {eq}")],
        "*": [(f"Then {name} gets {y} times as many {obj}.", f"{y} times as many: {eq}")],
        "/": [(f"{name} splits the {obj} into {y} equal piles and keeps one pile.",
               f"One of {y} piles: {eq}")],
    }
    return rng.choice(options[op])


def _group_text(op: str, x: int, a: int, b: int, name: str, obj: str) -> tuple[str, list[str]]:
    """(question sentence, two explanation lines) of a two-step event."""
    c = a * b
    if op == "+":
        return (f"{name} buys {a} bags with {b} {obj} in each.",
                [f"{a} bags of {b}: {a} * {b} = {c}.", f"Adding the bags: {x} + {c} = {x + c}."])
    return (f"{name} gives {a} friends {b} {obj} each.",
            [f"{a} friends get {b} each: {a} * {b} = {c}.",
             f"Giving them away: {x} - {c} = {x - c}."])


def _distractor(rng: random.Random, name: str, obj: str) -> str:
    other = rng.choice([n for n in NAMES if n != name])
    d = rng.randint(2, MAX_VALUE)
    return rng.choice([f"{other} has {d} {obj}.",
                       f"{name} also has {d} {rng.choice(OTHER_THINGS)}.",
                       f"{name} is {rng.randint(6, 60)} years old."])


def generate(seed: int, steps: int | None = None, allow_held_out: bool = True) -> Problem:
    """One problem from one seed; `steps` (1..MAX_STEPS) fixes the length, else it is drawn
    uniformly; without `allow_held_out` every step avoids the held-out triples (train and
    validation), drawing again until one does."""
    rng = random.Random(seed)
    steps = steps or rng.randint(1, MAX_STEPS)
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    x = rng.randint(2, 60)
    sentences, lines, unseen = [f"{name} has {x} {obj}."], [], False
    while len(lines) < steps:
        group = _group(rng, x) if steps - len(lines) >= 2 and rng.random() < 0.35 else None
        if group is not None:
            op, a, b = group
            triples = [(a, "*", b), (x, op, a * b)]
        else:
            op, y = next_step(rng, x)
            triples = [(x, op, y)]
        held_out = any(is_held_out(*t) for t in triples)
        if held_out and not allow_held_out:
            continue  # every x has non-held-out options, so this ends
        unseen |= held_out
        if group is not None:
            sentence, new_lines = _group_text(op, x, a, b, name, obj)
            x = apply_op(x, op, a * b)
        else:
            sentence, line = _simple_text(rng, op, x, y, name, obj)
            new_lines, x = [line], apply_op(x, op, y)
        sentences.append(sentence)
        lines += new_lines
    for _ in range(rng.choice([0, 0, 1])):  # placed anywhere after the opening sentence
        sentences.insert(rng.randint(1, len(sentences)), _distractor(rng, name, obj))
    sentences.append(f"How many {obj} does {name} have now?")
    answer = "\n".join(lines) + f"\n#### {x}"
    return Problem(" ".join(sentences), answer, x, steps, unseen)


def make_split(split: str, n: int, steps: int | None = None, offset: int = 0) -> list[Problem]:
    """The first n problems of a split (after skipping `offset`), deterministic. Train and
    validation problems are generated without held-out steps rather than filtered afterwards,
    so their step counts stay uniform."""
    return draw_split(split, n, offset,
                      lambda seed: generate(seed, steps, allow_held_out=split == "test"))


_FINAL = re.compile(r"####\s*(-?\d+)")


def extract_answer(text: str) -> int | None:
    """The number after the first `####`, else None: no fallback to the last number (as
    tasks/arithmetic.py has), so that an answer cut short by early EOS cannot score with an
    intermediate value."""
    m = _FINAL.search(text)
    return int(m.group(1)) if m else None


def check_answer(text: str, reference: int | str) -> bool:
    got = extract_answer(text)
    return got is not None and got == int(reference)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m unmaskd.tasks.longform",
                                 description="print problems of the long-form task")
    ap.add_argument("--split", choices=sorted(SPLIT_SEED_BASE), default="train")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--steps", type=int, choices=range(1, MAX_STEPS + 1))
    args = ap.parse_args()
    for p in make_split(args.split, args.n, args.steps):
        print(f"[{p.steps} steps{', unseen' if p.unseen else ''}]\n{p.prompt}\n{p.answer}\n")
