"""Your own problems (`--data FILE.jsonl`): the loader refuses a bad line by its number before
any work, the checkers score as documented, and eval and train-policy run on the sample file."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer
from unmaskd.cli.main import main
from unmaskd.engine.loop import Engine
from unmaskd.tasks.jsonl import DataError, Example, load_jsonl, make_checker, repeat

SAMPLE = Path(__file__).parent.parent / "tasks/samples/gsm8k_style.jsonl"
# the embedded model's own domain: what `eval --data` shows a newcomer out of the box
EMBEDDED_SAMPLE = Path(__file__).parent.parent / "tasks/samples/embedded_arithmetic.jsonl"
GOOD = json.dumps({"prompt": "Question: 1 + 1?\nAnswer:", "answer": "1 + 1 = 2.\n#### 2"})


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_the_sample_loads_with_prompts_and_chat_messages(tokenizer):
    examples = load_jsonl(SAMPLE, tokenizer)
    assert len(examples) == 20
    assert all(e.answer.splitlines()[-1] == f"#### {e.value}" for e in examples)
    # the chat lines went through the tiny model's template, which asks the task's question
    chat = examples[-1]
    assert chat.prompt.startswith("Question: ") and chat.prompt.endswith("\nAnswer:")
    assert chat.where == f"{SAMPLE}:20"


def test_the_embedded_sample_scores_on_the_embedded_model(tmp_path, capsys):
    """The shipped models score 0% on the GSM8K-style sample (outside what they learned), so
    it shows a newcomer nothing; the embedded-domain sample must give a reading (89-93% for
    threshold and top-k when measured for the README; here a floor far from 0)."""
    out = tmp_path / "eval.json"
    assert main(["eval", "--data", str(EMBEDDED_SAMPLE), "--threads", "1", "--sampler",
                 "threshold", "--json", str(out)]) == 0
    capsys.readouterr()
    (row,) = json.loads(out.read_text())["results"]
    assert row["n"] == 28 and row["accuracy"] >= 0.6, row


@pytest.mark.parametrize("line, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"prompt": "Q"}', "needs an `answer`"),
    ('{"prompt": "Q", "answer": ""}', "needs an `answer`"),
    ('{"answer": "2"}', "exactly one of `prompt`"),
    ('{"prompt": "Q", "messages": [], "answer": "2"}', "exactly one of `prompt`"),
    ('{"prompt": 3, "answer": "2"}', "`prompt` must be a non-empty string"),
    ('{"messages": [{"role": "user"}], "answer": "2"}', "`messages` must be a non-empty list"),
    ('{"prompt": "Q", "answer": "two"}', "no final number"),
    ('{"prompt": "' + "9 " * 200 + '", "answer": "2"}', "beside the canvas"),
])
def test_a_bad_line_is_named_by_its_number(tokenizer, tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n{GOOD}\n")  # blank lines are skipped but counted
    with pytest.raises(DataError) as info:
        load_jsonl(path, tokenizer, max_prompt_tokens=100)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_messages_without_a_chat_template_are_refused(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "1 + 1?"}],
                                "answer": "2"}) + "\n")
    with pytest.raises(DataError, match=r"chat.jsonl:1: `messages` need a chat template"):
        load_jsonl(path, tokenizer)


def test_an_empty_or_unreadable_file_is_refused(tokenizer, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: no problems"):
        load_jsonl(tmp_path / "empty.jsonl", tokenizer)
    with pytest.raises(DataError, match="missing.jsonl: cannot read"):
        load_jsonl(tmp_path / "missing.jsonl", tokenizer)


def test_exact_and_regex_answers_need_no_number(tokenizer, tmp_path):
    path = tmp_path / "words.jsonl"
    path.write_text(json.dumps({"prompt": "Capital of France?", "answer": "Paris"}) + "\n")
    assert load_jsonl(path, tokenizer, "exact")[0].value == "Paris"
    assert load_jsonl(path, tokenizer, "regex:is (\\w+)")[0].value == "Paris"


def test_final_number_checker():
    check = make_checker("final-number")
    assert check("3 + 4 = 7.\n#### 7", "7")
    assert check("#### 1,000 apples", "1000")
    assert check("#### $5.50", "5.5")
    assert check("#### 3\n#### -4", "-4")  # the last ####
    assert not check("#### 8", "7")
    assert not check("the answer is 7", "7")  # no #### in the output
    assert not check("#### none", "7")


def test_exact_and_regex_checkers():
    exact = make_checker("exact")
    assert exact("  Paris\n", "Paris")
    assert not exact("Paris.", "Paris")
    with_group = make_checker(r"regex:answer is (\w+)")
    assert with_group("so the answer is Paris.", "Paris")
    assert not with_group("so the answer is Rome.", "Paris")
    assert not with_group("no match", "Paris")
    whole = make_checker(r"regex:\d+$")
    assert whole("3 + 4 = 7", "7")
    optional = make_checker(r"regex:(x)?y")  # the group can stay unmatched
    assert not optional("y", "x")
    for bad in ("regex:(", "fuzzy"):
        with pytest.raises(DataError):
            make_checker(bad)


def test_repeat_makes_shuffled_passes_over_the_file():
    examples = [Example(str(i), str(i), str(i), f"f:{i}") for i in range(5)]
    out = repeat(examples, 12, seed=0)
    assert len(out) == 12
    assert sorted(e.prompt for e in out[:5]) == sorted(e.prompt for e in examples)
    assert sorted(e.prompt for e in out[5:10]) == sorted(e.prompt for e in examples)
    assert repeat(examples, 12, seed=0) == out


def test_eval_on_the_sample_file_writes_table_json_and_plot(tiny_model_dir, tmp_path, capsys):
    out, plot = tmp_path / "eval.json", tmp_path / "eval.png"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(SAMPLE), "--gen-length",
                 "8", "--threads", "1", "--sampler", "threshold", "--sampler", "topk_confidence",
                 "--json", str(out), "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert "| sampler | accuracy (95% CI) |" in table and "| threshold |" in table
    data = json.loads(out.read_text())
    assert data["data"] == str(SAMPLE) and data["checker"] == "final-number"
    assert data["n"] == 20 and data["complete"] is True
    assert [r["label"] for r in data["results"]] == ["threshold", "topk_confidence"]
    row = data["results"][0]
    assert row["n"] == 20 and 0 <= row["ci95"][0] <= row["accuracy"] <= row["ci95"][1] <= 1
    assert row["accuracy_by_level"] == {}  # the file's problems have no difficulty levels
    assert plot.stat().st_size > 0


def test_eval_scores_with_the_chosen_checker(tiny_model_dir, tmp_path, monkeypatch):
    import unmaskd.evaluation.evaluate as evaluate

    chosen: list[str] = []

    def everything_right(spec: str):
        chosen.append(spec)
        return lambda text, reference: True

    monkeypatch.setattr(evaluate, "make_checker", everything_right)
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(SAMPLE), "--n", "2",
                 "--gen-length", "8", "--threads", "1", "--sampler", "threshold",
                 "--checker", "exact", "--json", str(out)]) == 0
    assert chosen == ["exact"]
    result = json.loads(out.read_text())
    assert result["checker"] == "exact" and result["n"] == 2
    assert result["results"][0]["accuracy"] == 1.0


def test_eval_refuses_a_malformed_file_in_one_line_before_any_work(tiny_model_dir, tmp_path,
                                                                   monkeypatch, capsys):
    monkeypatch.setattr(Engine, "generate", lambda *a, **k: pytest.fail("work was started"))
    path = tmp_path / "data.jsonl"
    path.write_text(f"{GOOD}\n{GOOD}\n{{\"prompt\": \"Q\"}}\n")
    common = ["eval", "--model", str(tiny_model_dir), "--threads", "1", "--sampler", "threshold"]
    assert main(common + ["--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}:3: needs an `answer` (a non-empty string or a number)\n"
    assert main(common + ["--checker", "exact"]) == 2  # the built-in task keeps its checker
    assert "--checker scores --data files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(common + ["--data", str(path), "--checker", "regex:("])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(common + ["--data", str(path), "--split", "test"])


def test_train_policy_trains_on_the_file(tiny_model_dir, tmp_path):
    from unmaskd.training.policy_trainer import train

    seen: list[str] = []

    def reward(result, problem, gen_length) -> float:
        seen.append(problem.where)
        return 1.0 - result.nfe / gen_length

    out = tmp_path / "run"
    train(["--model", str(tiny_model_dir), "--out", str(out), "--gen-length", "8",
           "--block-length", "full", "--iterations", "2", "--prompts-per-step", "3",
           "--group-size", "2", "--data", str(SAMPLE), "--val-every", "2", "--val-n", "2"],
          reward_fn=reward)
    assert len(seen) == 2 * 3 * 2 and all(w.startswith(f"{SAMPLE}:") for w in seen)
    meta = json.loads((out / "policy/policy.json").read_text())
    assert meta["training"]["data"] == f"{SAMPLE} (checker final-number)"
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert "val_accuracy" in log[-1]


def test_train_policy_refuses_a_malformed_file_before_any_rollout(tiny_model_dir, tmp_path,
                                                                  capsys):
    from unmaskd.training.policy_trainer import train

    path = tmp_path / "data.jsonl"
    path.write_text(f"{GOOD}\nnot json\n")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        train(["--model", str(tiny_model_dir), "--out", str(out), "--data", str(path)])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {path}:2: not JSON")
    assert not out.exists()


def test_the_reward_uses_the_checker():
    from types import SimpleNamespace

    from unmaskd.training.policy_trainer import task_reward

    reward = task_reward(1.0, make_checker("exact"))
    result = SimpleNamespace(text="Paris", nfe=4)
    assert reward(result, Example("Q", "Paris", "Paris", "f:1"), 8) == pytest.approx(5 / 8)
    assert reward(result, Example("Q", "Rome", "Rome", "f:1"), 8) == 0.0
