"""`unmaskd eval`: every configuration is validated before the first problem, and the JSON
keeps every finished configuration if a run stops part way."""

import json

import pytest
from unmaskd.cli.main import main
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
    from unmaskd.evaluation.evaluate import early_eos, shorter_than_reference

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


def _row(sampler: str, params: dict, nfe: float, correct: int, n: int = 20,
         steps: int = 48) -> dict:
    from unmaskd.engine.stats import wilson_interval
    from unmaskd.evaluation.evaluate import Config

    return {"label": Config(sampler, params).label, "sampler": sampler, "params": params,
            "steps": steps, "n": n, "accuracy": correct / n,
            "ci95": list(wilson_interval(correct, n)), "mean_nfe": nfe}


def test_the_pareto_plot_labels_points_splits_series_and_draws_intervals():
    """Read from the matplotlib figure, not its pixels: one line per series (`learned` apart
    from `learned:beta=...`, a grid's second parameter apart), each point labelled with its
    dial, Wilson bars, and a y axis from 0."""
    from unmaskd.evaluation.evaluate import pareto_figure

    rows = [_row("threshold", {"threshold": 0.5}, 3.0, 14),
            _row("threshold", {"threshold": 0.9}, 5.0, 17),
            _row("learned", {}, 5.0, 17),
            _row("learned", {"beta": 0.5}, 7.0, 18), _row("learned", {"beta": 2}, 4.0, 15),
            _row("learned", {"policy": "a", "beta": 1}, 6.0, 16),
            _row("learned", {"policy": "b", "beta": 1}, 6.5, 16),
            _row("topk_confidence", {}, 12.0, 16, steps=12),
            _row("topk_confidence", {}, 48.0, 18, steps=48),
            *(_row("klass", {"conf": c, "kl": kl}, nfe, 15) for c, kl, nfe in
              [(0.5, 0.01, 8.0), (0.9, 0.01, 9.0), (0.5, 0.1, 10.0), (0.9, 0.1, 11.0)])]
    ax = pareto_figure(rows, "test").axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["threshold:threshold=0.5|0.9", "learned", "learned:beta=0.5|2",
                      "learned:policy=a,beta=1", "learned:policy=b,beta=1",
                      "topk_confidence:steps=12|48", "klass:conf=0.5|0.9,kl=0.01",
                      "klass:conf=0.5|0.9,kl=0.1"]
    labels = {(t.xy[0], round(t.xy[1], 6)): t.get_text() for t in ax.texts}
    assert labels[(3.0, 70.0)] == "0.5" and labels[(5.0, 85.0)] == "0.9"  # threshold's
    assert labels[(7.0, 90.0)] == "0.5" and labels[(4.0, 75.0)] == "2"  # learned's beta
    assert labels[(12.0, 80.0)] == "12" and labels[(48.0, 90.0)] == "48"  # top-k's steps
    assert [labels[(x, 75.0)] for x in (8.0, 9.0, 10.0, 11.0)] == ["0.5", "0.9"] * 2  # conf
    assert (6.0, 80.0) not in labels  # a line of one point: its legend names it
    # each point's bar spans its row's Wilson interval
    bars = {}
    for container in ax.containers:
        for segment in container.lines[2][0].get_segments():
            (x, lo), (_, hi) = segment
            bars.setdefault(x, []).append((round(lo, 6), round(hi, 6)))
    lo, hi = rows[0]["ci95"]
    assert (round(100 * lo, 6), round(100 * hi, 6)) in bars[3.0]
    assert sum(len(v) for v in bars.values()) == len(rows)
    assert ax.get_ylim() == (0.0, min(100.0, 100 * max(r["ci95"][1] for r in rows) + 5))


def test_the_pareto_plot_of_all_zero_accuracies_stays_at_or_above_zero():
    from unmaskd.evaluation.evaluate import pareto_figure

    rows = [_row("threshold", {"threshold": t}, nfe, 0) for t, nfe in [(0.5, 2.0), (0.9, 4.0)]]
    bottom, top = pareto_figure(rows, "zero").axes[0].get_ylim()
    assert bottom == 0 and 100 * rows[0]["ci95"][1] < top <= 100  # the bars show
