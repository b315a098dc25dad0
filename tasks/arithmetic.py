"""Synthetic multi-step arithmetic word problems (GSM8K-like), deterministic by seed.

    from unmaskd.tasks.arithmetic import make_split, check_answer
    problems = make_split("test", 500)

A problem is a short story about one person and one kind of object with 1 to 3 operations on
numbers in 1..99 (add, subtract, multiply, divide evenly). The worked answer is one line per
step (`a + b = c.`) and a final line `#### N`. The model writes it into a fixed canvas padded
with EOS, as LLaDA's SFT does.

Splits never overlap: each split draws from its own seed range *and* keeps only questions whose
text hash falls into its own bucket, so no question text is in two splits. Train and validation
never contain a "held-out" step (a (value, op, operand) triple whose hash is 0 mod 8); test
draws unconstrained, so about a third of its 3-step problems use number combinations never seen
in training (`Problem.unseen` says which).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

NAMES = [
    "Ava", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jack", "Kai", "Lena",
    "Max", "Nora", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Zoe",
]
OBJECTS = [
    "apples", "marbles", "stickers", "books", "cookies", "coins", "pencils", "cards",
    "shells", "flowers", "stamps", "toys", "eggs", "candies", "beads", "rocks",
]
MAX_VALUE = 99
SPLIT_SEED_BASE = {"train": 0, "validation": 1_000_000_000, "test": 2_000_000_000}
# Bucket of hash(question) % 100 owned by each split: disjoint by construction.
SPLIT_BUCKETS = {"train": range(0, 90), "validation": range(90, 95), "test": range(95, 100)}


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # worked solution, ending in "#### N"
    value: int  # the final number
    steps: int  # difficulty level: number of operations
    unseen: bool  # uses a (value, op, operand) step held out from train/validation

    @property
    def prompt(self) -> str:
        return format_prompt(self.question)


def format_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def is_held_out(value: int, op: str, operand: int) -> bool:
    return stable_hash(f"{value}{op}{operand}") % 8 == 0


def next_step(rng: random.Random, x: int) -> tuple[str, int]:
    """Pick an operation applicable to x that keeps the result in 1..MAX_VALUE."""
    options = []
    if x < MAX_VALUE:
        options.append("+")
    if x > 1:
        options.append("-")
    if 2 * x <= MAX_VALUE:
        options.append("*")
    if any(x % k == 0 for k in range(2, 10)):
        options.append("/")
    op = rng.choice(options)
    if op == "+":
        return op, rng.randint(1, min(40, MAX_VALUE - x))
    if op == "-":
        return op, rng.randint(1, x - 1)
    if op == "*":
        return op, rng.randint(2, min(9, MAX_VALUE // x))
    return op, rng.choice([k for k in range(2, 10) if x % k == 0])


def _sentence(rng: random.Random, op: str, y: int, name: str, obj: str) -> str:
    other = rng.choice([n for n in NAMES if n != name])
    templates = {
        "+": [f"{name} buys {y} more {obj}.", f"{other} gives {name} {y} {obj}.",
              f"{name} finds {y} more {obj}."],
        "-": [f"{name} gives {y} {obj} to {other}.", f"{name} loses {y} {obj}.",
              f"{name} sells {y} {obj}."],
        "*": [f"Then {name} gets {y} times as many {obj}.",
              f"{name}'s {obj} are multiplied by {y}."],
        "/": [f"{name} shares the {obj} equally among {y} friends and keeps one share.",
              f"{name} splits the {obj} into {y} equal piles and keeps one pile."],
    }
    return rng.choice(templates[op])


def apply_op(x: int, op: str, y: int) -> int:
    return {"+": x + y, "-": x - y, "*": x * y, "/": x // y}[op]


def generate(seed: int, steps: int | None = None) -> Problem:
    """One problem from one seed; `steps` (1..3) fixes the difficulty, else it is drawn."""
    rng = random.Random(seed)
    steps = steps or rng.randint(1, 3)
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    x = rng.randint(2, 60)
    sentences = [f"{name} has {x} {obj}."]
    lines = []
    unseen = False
    for _ in range(steps):
        op, y = next_step(rng, x)
        unseen |= is_held_out(x, op, y)
        sentences.append(_sentence(rng, op, y, name, obj))
        z = apply_op(x, op, y)
        lines.append(f"{x} {op} {y} = {z}.")
        x = z
    sentences.append(f"How many {obj} does {name} have now?")
    answer = "\n".join(lines) + f"\n#### {x}"
    return Problem(" ".join(sentences), answer, x, steps, unseen)


def make_split(split: str, n: int, steps: int | None = None, offset: int = 0) -> list[Problem]:
    """The first n problems of a split (after skipping `offset`), deterministic."""
    return draw_split(split, n, offset, lambda seed: generate(seed, steps))


def draw_split(split: str, n: int, offset: int,
               generate_one: Callable[[int], Problem]) -> list[Problem]:
    """The first n problems from `generate_one(seed)` over the split's own seeds that fall into
    its own hash buckets (so no question text is in two splits); outside the test split,
    problems with a held-out step are skipped. Shared by every built-in task suite."""
    if split not in SPLIT_SEED_BASE:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEED_BASE)}")
    out: list[Problem] = []
    seed = SPLIT_SEED_BASE[split]
    skipped = 0
    while len(out) < n:
        p = generate_one(seed)
        seed += 1
        if stable_hash(p.question) % 100 not in SPLIT_BUCKETS[split]:
            continue
        if split != "test" and p.unseen:
            continue
        if skipped < offset:
            skipped += 1
            continue
        out.append(p)
    return out


_FINAL = re.compile(r"####\s*(-?\d+)")
_NUMBER = re.compile(r"-?\d+")


def extract_answer(text: str) -> int | None:
    """The `#### N` value, else the last number in the text, else None."""
    m = _FINAL.search(text)
    if m:
        return int(m.group(1))
    numbers = _NUMBER.findall(text)
    return int(numbers[-1]) if numbers else None


def check_answer(text: str, reference: int | str) -> bool:
    got = extract_answer(text)
    return got is not None and got == int(reference)
