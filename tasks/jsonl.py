"""Your own problems for `unmaskd eval --data` and `unmaskd train-policy --data`: JSON lines.

    {"prompt": "Question: ...\\nAnswer:", "answer": "42"}
    {"messages": [{"role": "user", "content": "..."}], "answer": "6 * 7 = 42.\\n#### 42"}

`prompt` is given to the model as is; `messages` go through the tokenizer's chat template (with
the generation prompt), as /v1/chat/completions does. `answer` is the final answer or a worked
solution ending in `#### N`. Every line is checked before any work starts; a bad one is a
`DataError` naming FILE:LINE. Other keys (ids, sources) are ignored.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

# text, reference answer -> correct?
Checker = Callable[[str, str], bool]

DEFAULT_CHECKER = "final-number"
CHECKERS_HELP = (
    "how an output is scored against a line's answer (whose final answer is the text after its "
    "last '####', or the whole answer): 'final-number' (default): the number after the last "
    "'####' in the output equals the final answer's number (commas, '$' and trailing zeros "
    "after a decimal point ignored); 'exact': the whole output equals the final answer "
    "(surrounding whitespace ignored); 'regex:PATTERN': the first match of the Python regular "
    "expression PATTERN in the output (its group 1 if it has a group) equals the final answer"
)

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


class DataError(ValueError):
    """A --data file or --checker that cannot be used, said in one line (FILE:LINE: ...)."""


@dataclass(frozen=True)
class Example:
    prompt: str  # the text the model sees (chat template already applied)
    answer: str  # as written in the file
    value: str  # the final answer the checker compares with
    where: str  # FILE:LINE, for error messages


def final_answer(answer: str) -> str:
    return answer.rpartition("####")[2].strip() if "####" in answer else answer.strip()


def _number(text: str) -> Decimal | None:
    m = _NUMBER.search(text)
    return Decimal(m.group().replace(",", "").replace("$", "")) if m else None


def _final_number(text: str, reference: str) -> bool:
    if "####" not in text:
        return False
    got = _number(text.rpartition("####")[2])
    return got is not None and got == _number(reference)


def checker_arg(spec: str) -> str:
    """argparse type for --checker: the spec itself, once it is known to work."""
    try:
        make_checker(spec)
    except DataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return spec


def make_checker(spec: str) -> Checker:
    if spec == "final-number":
        return _final_number
    if spec == "exact":
        return lambda text, reference: text.strip() == reference
    if spec.startswith("regex:"):
        try:
            pattern = re.compile(spec.removeprefix("regex:"))
        except re.error as e:
            raise DataError(f"bad regular expression in {spec!r}: {e}") from None

        def regex(text: str, reference: str) -> bool:
            m = pattern.search(text)
            found = m.group(1 if pattern.groups else 0) if m else None  # None: group unmatched
            return found is not None and found.strip() == reference
        return regex
    raise DataError(f"unknown checker {spec!r}; expected final-number, exact or regex:PATTERN")


def load_jsonl(path: Path, tokenizer, checker: str = DEFAULT_CHECKER,
               max_prompt_tokens: int | None = None) -> list[Example]:
    """Every line of `path` as an Example; `max_prompt_tokens`: the room the model leaves the
    prompt beside the canvas, so that a too-long prompt is named by its line, not found later."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            prompt, answer = _parse(line, tokenizer)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        value = final_answer(answer)
        if checker == "final-number" and _number(value) is None:
            raise DataError(f"{where}: the answer has no final number for the final-number "
                            "checker (choose --checker exact or regex:PATTERN)")
        n_tokens = len(tokenizer(prompt)["input_ids"])
        if not n_tokens:
            raise DataError(f"{where}: the prompt has no tokens")
        if max_prompt_tokens is not None and n_tokens > max_prompt_tokens:
            raise DataError(f"{where}: the prompt is {n_tokens} tokens; beside the canvas the "
                            f"model has room for {max_prompt_tokens} (see --gen-length)")
        examples.append(Example(prompt, answer, value, where))
    if not examples:
        raise DataError(f"{path}: no problems in the file")
    return examples


def _parse(line: str, tokenizer) -> tuple[str, str]:
    """(prompt text, answer) of one line, or a DataError saying what is wrong with it."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    answer = obj.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise DataError("needs an `answer` (a non-empty string or a number)")
    if ("prompt" in obj) == ("messages" in obj):
        raise DataError("needs exactly one of `prompt` (text used as is) or `messages` (chat)")
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"]:
            raise DataError("`prompt` must be a non-empty string")
        return obj["prompt"], answer
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in messages):
        raise DataError("`messages` must be a non-empty list of {\"role\": ..., \"content\": ...}")
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("`messages` need a chat template and the model's tokenizer has none; "
                        "give the text as `prompt` instead")
    try:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False,
                                               add_generation_prompt=True)
    except Exception as e:  # the template may raise on what it cannot render
        raise DataError(f"the chat template cannot render `messages`: {e}") from None
    return prompt, answer


def repeat(examples: list[Example], n: int, seed: int) -> list[Example]:
    """n examples for training: passes over the file, each in its own shuffled order (a file
    sorted by difficulty or topic would otherwise feed the trainer one kind at a time)."""
    rng = random.Random(seed)
    out: list[Example] = []
    while len(out) < n:
        order = examples[:]
        rng.shuffle(order)
        out += order
    return out[:n]
