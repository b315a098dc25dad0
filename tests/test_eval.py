"""`unmaskd eval`: every configuration is validated before the first problem, and the JSON
keeps every finished configuration if a run stops part way."""

import json

import pytest
from unmaskd.engine.cli import main
from unmaskd.engine.loop import Engine


@pytest.fixture
def generate_calls(monkeypatch) -> list[int]:
    """Count Engine.generate calls (one per configuration) without changing what they do."""
    calls: list[int] = []
    real = Engine.generate

    def counted(self, requests, *args, **kwargs):
        calls.append(len(requests))
        return real(self, requests, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate", counted)
    return calls


def eval_args(model_dir, *extra: str) -> list[str]:
    return ["eval", "--model", str(model_dir), "--n", "3", "--gen-length", "8", "--threads", "1",
            *extra]


def test_a_bad_spec_fails_before_any_problem_runs(tiny_model_dir, generate_calls, capsys):
    # steps=64 exceeds the 8-token canvas; threshold is fine and listed first
    code = main(eval_args(tiny_model_dir, "--sampler", "threshold",
                          "--sampler", "topk_confidence:steps=64"))
    assert code == 2
    err = capsys.readouterr().err
    assert "steps" in err and "topk_confidence:steps=64" in err
    assert generate_calls == []


def test_steps_per_block_is_swept_like_any_key(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(eval_args(tiny_model_dir, "--sampler", "topk_confidence:steps_per_block=1|2",
                          "--json", str(out))) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["label"], r["steps"], r["mean_nfe"]) for r in rows] == [
        ("topk_confidence:steps_per_block=1", 4, 4), ("topk_confidence:steps_per_block=2", 8, 8)]


def test_a_bad_point_inside_a_sweep_fails_before_any_problem_runs(tiny_model_dir,
                                                                   generate_calls, capsys):
    code = main(eval_args(tiny_model_dir, "--sampler", "topk_confidence:steps=8|4|3"))
    assert code == 2
    assert "topk_confidence:steps=3" in capsys.readouterr().err
    assert generate_calls == []


def test_json_keeps_the_finished_configurations_of_an_interrupted_run(tiny_model_dir, tmp_path,
                                                                      monkeypatch):
    real = Engine.generate
    calls = []

    def stop_at_the_third(self, requests, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, requests, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate", stop_at_the_third)
    out = tmp_path / "eval.json"
    with pytest.raises(KeyboardInterrupt):
        main(eval_args(tiny_model_dir, "--sampler", "topk_confidence:steps=8|4",
                       "--sampler", "threshold", "--json", str(out)))
    data = json.loads(out.read_text())
    assert [r["label"] for r in data["results"]] == ["topk_confidence:steps=8",
                                                     "topk_confidence:steps=4"]
    assert data["complete"] is False


def test_early_eos_counts_padding_committed_before_the_text_it_ends():
    from unmaskd.engine.evaluate import early_eos, shorter_than_reference

    eos = 9
    # step 0 commits the padding at 2 while 0 and 1 are masked; 3 comes after everything
    assert early_eos([5, 6, eos, eos], [2, 1, 0, 3], eos) == 1
    assert early_eos([5, 6, eos, eos], [0, 1, 2, 3], eos) == 0  # left to right: none early
    assert early_eos([5, eos, eos], [1, 1, 0], eos) == 1  # the same step as the text is not
    assert shorter_than_reference([5, eos, eos], 2, eos)
    assert not shorter_than_reference([5, 6, eos], 2, eos)
    assert not shorter_than_reference([5, 6, 7], 3, eos)  # no EOS: the whole canvas is text


def test_rows_report_early_eos_and_short_answers(tiny_model_dir, tmp_path):
    out = tmp_path / "r.json"
    assert main(eval_args(tiny_model_dir, "--sampler", "topk_confidence", "--json",
                          str(out))) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["early_eos"] >= 0 and 0 <= row["shorter_than_reference"] <= 1
