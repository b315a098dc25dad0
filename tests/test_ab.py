"""A/B experiments: the statistics on hand-computed numbers, arm assignment, reports built from
known records, and the /ab endpoints on a real server started with --ab-config.

Hand computations used below:
- [2, 4, 4, 4, 5, 5, 7, 9]: mean 5, s = sqrt(32/7), t(0.975, 7) = 2.364624, half-width 1.787488.
- Welch, a = [1, 2, 3, 4], b = [2, 4, 6, 8]: s_a^2/n = 5/12, s_b^2/n = 5/3, se = sqrt(25/12),
  t = 2.5 / se = sqrt(3), df = (25/12)^2 / ((5/12)^2/3 + (5/3)^2/3) = 75/17.
- Two proportions 45/50 vs 35/50: pooled 0.8, se = sqrt(0.8 * 0.2 * (2/50)) = 0.08,
  z = -0.2 / 0.08 = -2.5, p = 2 (1 - Phi(2.5)) = 0.012419.
- 9/12 vs 3/12: pooled 0.5, se = sqrt(0.25 / 6), z = -0.5 / se = -sqrt(6), p = 0.014306.
- Wilson 45/50, z = 1.959964: center 0.938415 / 1.076829 = 0.871461, half-width 0.085063.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import httpx
import pytest
from scipy import stats
from unmaskd.engine.stats import wilson_interval
from unmaskd.server.ab import (
    MAX_EXPERIMENTS,
    NOT_ENOUGH,
    ABConfig,
    Experiment,
    Experiments,
    ExperimentSpec,
    Record,
    assign_arm,
    load_ab_config,
    mean_ci,
    percentile,
    two_proportion_z_test,
    welch_test,
)
from unmaskd.server.protocol import ApiError

PROMPT = "Question: Ava has 3 apples. She buys 4 more. How many apples does Ava have now?\nAnswer:"
AB_YAML = """\
experiments:
  speed:
    arms:
      control: {sampler: topk_confidence}
      challenger: {sampler: random, weight: 1}
"""
ARMS = {"control": {"sampler": "topk_confidence", "weight": 1},
        "challenger": {"sampler": "random", "sampler_params": {}, "weight": 1}}


# ---- statistics --------------------------------------------------------------------------------
def test_mean_ci_hand_computed():
    mean, low, high = mean_ci([2, 4, 4, 4, 5, 5, 7, 9])
    assert mean == 5
    assert low == pytest.approx(5 - 1.787488, abs=1e-5)
    assert high == pytest.approx(5 + 1.787488, abs=1e-5)
    assert mean_ci([3.5]) == (3.5, None, None)


def test_wilson_interval_hand_computed():
    low, high = wilson_interval(45, 50)
    assert low == pytest.approx(0.871461 - 0.085063, abs=1e-5)
    assert high == pytest.approx(0.871461 + 0.085063, abs=1e-5)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1)
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no data: anything (`unmaskd eval`, n = 0)


def test_welch_test_hand_computed():
    out = welch_test([1, 2, 3, 4], [2, 4, 6, 8])
    assert out["diff"] == 2.5
    assert out["statistic"] == pytest.approx(math.sqrt(3))
    assert out["p_value"] == pytest.approx(2 * stats.t.sf(math.sqrt(3), 75 / 17))
    flat = welch_test([1, 1, 1], [1, 1, 1])  # no variance: undefined, reported as null
    assert flat["diff"] == 0 and flat["statistic"] is None and flat["p_value"] is None


def test_two_proportion_z_test_hand_computed():
    out = two_proportion_z_test(45, 50, 35, 50)
    assert out["diff"] == pytest.approx(-0.2)
    assert out["statistic"] == pytest.approx(-2.5)
    assert out["p_value"] == pytest.approx(0.012419, abs=1e-6)
    assert two_proportion_z_test(10, 10, 10, 10) == {"diff": 0, "statistic": 0.0,
                                                      "p_value": 1.0}


def test_percentile_interpolates():
    values = list(range(1, 11))
    assert percentile(values, 50) == 5.5 and percentile(values, 95) == pytest.approx(9.55)


def test_assignment_is_stable_and_weighted():
    arms = [("a", 3.0), ("b", 1.0)]
    rng = random.Random(0)
    assert {assign_arm("e", arms, "alice", rng) for _ in range(20)} == {
        assign_arm("e", arms, "alice", random.Random(1))}
    share = sum(assign_arm("e", arms, f"user{i}", rng) == "a" for i in range(4000)) / 4000
    assert abs(share - 0.75) < 0.03
    share = sum(assign_arm("e", arms, None, rng) == "a" for _ in range(4000)) / 4000
    assert abs(share - 0.75) < 0.03
    # a different experiment name reshuffles users
    same = sum(assign_arm("e", [("a", 1), ("b", 1)], f"u{i}", rng)
               == assign_arm("f", [("a", 1), ("b", 1)], f"u{i}", rng) for i in range(2000))
    assert abs(same / 2000 - 0.5) < 0.05


def test_report_from_known_records():
    exp = Experiment("e", ExperimentSpec.model_validate({"arms": ARMS}))
    for i in range(12):
        exp.record(f"c{i}", Record("control", 0.1 * (i + 1), 10 + i % 3, 2.0, float(i < 9)))
        exp.record(f"x{i}", Record("challenger", 0.2 * (i + 1), 20 + i % 2, 1.0, float(i < 3)))
    report = exp.report(min_samples=10)
    assert report["status"] == "ok"
    control = report["arms"]["control"]
    assert control["requests"] == 12 and control["sampler_params"] == {}
    latencies = [0.1 * (i + 1) for i in range(12)]
    assert control["latency_s"]["mean"] == pytest.approx(sum(latencies) / 12)
    assert control["latency_s"]["p95"] == pytest.approx(percentile(latencies, 95))
    assert control["accuracy"]["mean"] == 0.75 and control["accuracy"]["n"] == 12
    (cmp,) = report["comparisons"]
    assert cmp["arms"] == ["control", "challenger"] and cmp["status"] == "ok"
    assert cmp["accuracy"]["statistic"] == pytest.approx(-math.sqrt(6))
    assert cmp["accuracy"]["p_value"] == pytest.approx(0.014306, abs=1e-6)
    assert cmp["nfe"]["diff"] == pytest.approx(20.5 - 11)
    exp.feedback("x0", 0.0)  # feedback overrides the reference check
    assert exp.report(10)["arms"]["challenger"]["accuracy"]["mean"] == pytest.approx(2 / 12)
    with pytest.raises(KeyError):
        exp.feedback("nope", 1.0)
    small = Experiment("s", ExperimentSpec.model_validate({"arms": ARMS}))
    for i in range(9):
        small.record(f"c{i}", Record("control", 0.1, 10, 2.0, None))
        small.record(f"x{i}", Record("challenger", 0.1, 10, 2.0, None))
    assert small.report(10)["status"] == NOT_ENOUGH
    assert small.report(10)["comparisons"][0] == {"arms": ["control", "challenger"],
                                                  "status": NOT_ENOUGH}
    assert small.report(9)["comparisons"][0]["accuracy"]["status"] == NOT_ENOUGH


def test_config_files_yaml_and_json(tmp_path):
    yml = tmp_path / "ab.yaml"
    yml.write_text(AB_YAML)
    jsn = tmp_path / "ab.json"
    jsn.write_text(json.dumps({"experiments": {"speed": {"arms": ARMS}}}))
    assert load_ab_config(yml) == load_ab_config(jsn)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"experiments": {"x": {"arms": {"a": {"sampler": "nope"}}}}}))
    with pytest.raises(ValueError, match="arms.a.sampler"):
        load_ab_config(bad)


# ---- the server ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(launch_server, tmp_path_factory):
    config = tmp_path_factory.mktemp("ab") / "ab.yaml"
    config.write_text(AB_YAML)
    srv = launch_server("--ab-config", str(config))
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def gen(client: httpx.Client, **body) -> dict:
    r = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 8, "steps": 8,
                                       "block_length": 4, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_config_experiment_assigns_sticky_arms_that_override_the_sampler(client):
    arms = [("control", 1.0), ("challenger", 1.0)]
    for user in ("alice", "bob", "carol"):
        expected = assign_arm("speed", arms, user, random.Random())
        outs = [gen(client, ab="speed", user=user, sampler="eb") for _ in range(2)]
        assert [o["arm"] for o in outs] == [expected] * 2
        assert outs[0]["sampler"] == ARMS[expected]["sampler"]
    assert client.get("/ab").json()["experiments"]["speed"]["arms"]["control"]["sampler"] == \
        "topk_confidence"


def test_report_statistics_end_to_end(client):
    r = client.put("/ab/report", json={"arms": ARMS})
    assert r.status_code == 200 and r.json()["arms"]["control"]["sampler"] == "topk_confidence"
    arms = [("control", 1.0), ("challenger", 1.0)]
    users = {"control": [], "challenger": []}
    i = 0
    while min(len(u) for u in users.values()) < 10:
        arm = assign_arm("report", arms, f"user{i}", random.Random())
        if len(users[arm]) < 10:
            users[arm].append(f"user{i}")
        i += 1
    seen: dict[str, list[dict]] = {"control": [], "challenger": []}
    for k in range(10):
        if k == 9:
            report = client.get("/ab/report").json()
            assert report["status"] == NOT_ENOUGH
            assert report["arms"]["control"]["requests"] == 9
        for arm in ("control", "challenger"):
            out = gen(client, ab="report", user=users[arm][k], reference=7)
            assert out["arm"] == arm and out["correct"] is not None
            seen[arm].append(out)
    report = client.get("/ab/report").json()
    assert report["status"] == "ok" and report["min_samples"] == 10
    for arm, outs in seen.items():
        a = report["arms"][arm]
        assert a["requests"] == 10
        assert a["nfe"]["mean"] == pytest.approx(sum(o["nfe"] for o in outs) / 10)
        assert a["tokens_per_step"]["mean"] == pytest.approx(
            sum(o["tokens_per_step"] for o in outs) / 10)
        assert a["accuracy"]["mean"] == sum(o["correct"] for o in outs) / 10
        lat = a["latency_s"]
        assert 0 < lat["p50"] <= lat["p95"] and lat["ci95"][0] <= lat["mean"] <= lat["ci95"][1]
    (cmp,) = report["comparisons"]
    assert cmp["status"] == "ok" and cmp["accuracy"]["status"] == "ok"
    assert 0 <= cmp["latency_s"]["p_value"] <= 1
    correct = [sum(o["correct"] for o in seen[arm]) for arm in ("control", "challenger")]
    expected = two_proportion_z_test(correct[0], 10, correct[1], 10)
    assert cmp["accuracy"]["p_value"] == pytest.approx(expected["p_value"])
    # feedback scores replace the reference check
    for out in seen["challenger"][:5]:
        r = client.post("/ab/report/feedback", json={"request_id": out["id"], "score": 1})
        assert r.status_code == 200
    feedback_acc = (5 + sum(o["correct"] for o in seen["challenger"][5:])) / 10
    assert client.get("/ab/report").json()["arms"]["challenger"]["accuracy"]["mean"] == \
        feedback_acc
    # arms are metric labels
    metrics = client.get("/metrics").text
    assert 'arm="challenger"' in metrics and 'arm="control"' in metrics
    # redefining the experiment starts afresh
    assert client.put("/ab/report", json={"arms": ARMS}).status_code == 200
    assert client.get("/ab/report").json()["arms"]["control"]["requests"] == 0


@pytest.mark.parametrize("arms,field", [
    ({"a": {"sampler": "topk_confidence"}, "b": {"sampler": "nope"}}, "arms.b.sampler"),
    ({"a": {"sampler": "topk_confidence", "sampler_params": {"nope": 1}}},
     "arms.a.sampler_params.nope"),
    ({"a": {"sampler": "random", "weight": 0}}, "arms"),
    ({}, "arms"),
    ({"a": {"sampler": "random", "colour": "red"}}, "arms"),
    ({f"arm{i}": {"sampler": "random"} for i in range(17)}, "arms"),
    ({"a" * 65: {"sampler": "random"}}, "arms"),
    ({"a": {"sampler": "random", "weight": "2"}}, "arms"),
])
def test_put_validates_every_arm(client, arms, field):
    r = client.put("/ab/invalid", json={"arms": arms})
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert client.get("/ab/invalid").status_code == 404


def test_unknown_experiments_and_bad_feedback(client):
    r = client.post("/generate", json={"prompt": PROMPT, "ab": "nope"})
    assert r.status_code == 422 and r.json()["field"] == "ab"
    assert client.get("/ab/nope").status_code == 404
    assert client.post("/ab/nope/feedback", json={"request_id": "x", "score": 1}).status_code == 404
    r = client.post("/ab/speed/feedback", json={"request_id": "gen-unknown", "score": 1})
    assert r.status_code == 404 and r.json()["field"] == "request_id"
    for score in (1.5, "1", True):
        r = client.post("/ab/speed/feedback", json={"request_id": "x", "score": score})
        assert r.status_code == 422 and r.json()["field"] == "score", r.text


def test_bad_ab_config_stops_startup(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments:\n  x:\n    arms:\n      a: {sampler: nope}\n")
    proc = subprocess.run([sys.executable, "-m", "unmaskd.cli", "serve", "--model",
                           str(tiny_model_dir), "--ab-config", str(bad)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "arms.a.sampler" in proc.stderr


def test_experiment_count_is_capped():
    exps = Experiments(ABConfig(), min_samples=10)
    spec = ExperimentSpec(arms={"a": {"sampler": "random"}})
    for i in range(MAX_EXPERIMENTS):
        exps.put(f"e{i}", spec)
    exps.put("e0", spec)  # replacing one is always allowed
    with pytest.raises(ApiError) as info:
        exps.put("one-too-many", spec)
    assert info.value.status == 422 and info.value.field == "name"


def test_experiment_names_are_capped(client):
    r = client.put("/ab/" + "x" * 65, json={"arms": {"a": {"sampler": "random"}}})
    assert r.status_code == 422 and r.json()["field"] == "name", r.text
