"""The long-form task suite (issue 19): generator, splits, canvas fit and checker."""

import collections
import json
import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from unmaskd.cli.main import main
from unmaskd.dllm import EMBEDDED_MODEL_DIR
from unmaskd.engine.loop import Engine
from unmaskd.tasks import arithmetic
from unmaskd.tasks.longform import (
    GEN_LENGTH,
    MAX_STEPS,
    check_answer,
    extract_answer,
    generate,
    is_held_out,
    make_split,
)
from unmaskd.training.tokenizer import train_tokenizer

_STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def _triples(answer: str) -> list[tuple[int, str, int]]:
    return [(int(a), op, int(b)) for a, op, b, _ in _STEP.findall(answer)]


@pytest.fixture(scope="module")
def splits():
    return {"train": make_split("train", 2000), "validation": make_split("validation", 300),
            "test": make_split("test", 500)}


def test_generator_is_deterministic():
    assert generate(7) == generate(7)
    assert generate(7, allow_held_out=False) == generate(7, allow_held_out=False)
    assert make_split("validation", 20) == make_split("validation", 20)
    assert make_split("test", 20, offset=5) == make_split("test", 25)[5:]


def test_answers_are_worked_and_correct(splits):
    for p in splits["train"][:500]:
        lines = p.answer.split("\n")
        assert len(lines) == p.steps + 1 and lines[-1] == f"#### {p.value}"
        for line in lines[:-1]:  # one equation per explanation line, each within 1..99
            (a, op, b, c), = _STEP.findall(line)
            assert eval(f"{a} {op} {b}".replace("/", "//")) == int(c)  # noqa: S307 - ours
            assert 1 <= int(c) <= 99
        assert int(_STEP.findall(lines[-2])[0][3]) == p.value


def test_splits_are_disjoint_and_test_holds_unseen_combinations(splits):
    questions = {name: {p.question for p in ps} for name, ps in splits.items()}
    assert not questions["train"] & questions["validation"]
    assert not questions["train"] & questions["test"]
    assert not questions["validation"] & questions["test"]
    for p in splits["train"] + splits["validation"]:
        assert not p.unseen and not any(is_held_out(*t) for t in _triples(p.answer))
    for p in splits["test"]:  # the flag says exactly whether a held-out step is used
        assert p.unseen == any(is_held_out(*t) for t in _triples(p.answer))
    assert sum(p.unseen for p in splits["test"]) > 100


def test_answer_lengths_span_one_to_four_steps(splits):
    for name, ps in splits.items():
        histogram = collections.Counter(p.steps for p in ps)
        assert set(histogram) == set(range(1, MAX_STEPS + 1)), name
        assert min(histogram.values()) > len(ps) / MAX_STEPS / 2, name  # roughly uniform


def test_step_count_is_not_the_sentence_count(splits):
    # distractors cost no step and two-step sentences cost two: the length is not read off
    # the prompt by counting sentences
    sentences = collections.defaultdict(set)
    for p in splits["train"]:
        sentences[p.steps].add(p.question.count("."))
    assert all(len(counts) >= 3 for s, counts in sentences.items() if s > 1)


def test_every_answer_fits_the_canvas(splits, tmp_path):
    answers = [p.answer for ps in splits.values() for p in ps]
    tokenizers = {
        # as the long model's training must build it: on both suites
        "trained": train_tokenizer(tmp_path, n_problems=2000,
                                   splits=(arithmetic.make_split, make_split)),
        # the shipped one never saw the new wording: byte-level BPE spells it in more tokens
        "embedded": Tokenizer.from_file(str(EMBEDDED_MODEL_DIR / "tokenizer.json")),
    }
    lengths = {name: [len(e.ids) for e in tok.encode_batch(answers)]
               for name, tok in tokenizers.items()}
    assert max(lengths["trained"]) <= max(lengths["embedded"]) <= GEN_LENGTH
    # most of the canvas is padding, by an amount that varies widely from problem to problem
    for found in lengths.values():
        assert max(found) < GEN_LENGTH / 2 and max(found) > 4 * min(found)


def test_checker_reads_only_the_final_number():
    p = make_split("test", 1)[0]
    assert check_answer(p.answer, p.value)
    assert check_answer(p.answer + "<|endoftext|>" * 3, str(p.value))
    assert not check_answer(p.answer.replace(f"#### {p.value}", f"#### {p.value + 1}"), p.value)
    # cut short before `####` (early EOS): wrong, even though the last line holds the value
    assert not check_answer(p.answer.rpartition("\n")[0], p.value)
    assert extract_answer("#### -5") == -5
    assert extract_answer("3 + 4 = 7.\n#### 7\n#### 8") == 7


def test_eval_runs_the_named_task(long_model_dir, tmp_path, monkeypatch):
    prompts: list[list[int]] = []
    real = Engine.generate

    def recorded(self, requests, *args, **kwargs):
        prompts.extend(r.prompt_ids for r in requests)
        return real(self, requests, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate", recorded)
    out = tmp_path / "eval.json"
    # a short canvas: this checks which problems run, not how well (the 1,024-token tiny model)
    assert main(["eval", "--model", str(long_model_dir), "--task", "longform", "--split",
                 "validation", "--n", "3", "--gen-length", "8", "--threads", "1",
                 "--sampler", "threshold", "--json", str(out)]) == 0
    tok = Tokenizer.from_file(str(long_model_dir / "tokenizer.json"))
    assert prompts == [tok.encode(p.prompt).ids for p in make_split("validation", 3)]
    assert json.loads(out.read_text())["task"] == "longform"


def test_eval_task_and_data_exclude_each_other(long_model_dir, capsys):
    data = Path(__file__).parents[1] / "tasks" / "samples" / "gsm8k_style.jsonl"
    assert main(["eval", "--model", str(long_model_dir), "--task", "longform", "--data",
                 str(data), "--sampler", "threshold", "--threads", "1"]) == 2
    assert "--task" in capsys.readouterr().err
