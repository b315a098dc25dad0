"""A real Prometheus scraping a real `unmaskd serve`, both on loopback.

Prometheus runs on the repo's deploy/prometheus/prometheus.yml with its targets pointed at the
test server and a 1 s scrape interval. After two waves of requests (two samplers, plus an A/B
experiment) the test checks through Prometheus' HTTP API that tokens/step per sampler computed
in PromQL equals what the clients were told, and runs every query of the Grafana dashboard:
none may fail to parse, and none may come back empty or NaN, since the requests touched every
metric the dashboard reads.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CI = os.environ.get("CI", "").lower() == "true"
PROMETHEUS = shutil.which("prometheus")
GEN = 16  # canvas length of every request
PROMPT = "Question: Ava has 3 apples. She buys 4 more apples. How many apples does Ava have now?\n"
# (sampler, extra request fields): distinct tokens/step on the tiny model
REQUESTS = [
    ("threshold", {"sampler_params": {"threshold": 0.2}}),
    ("topk_confidence", {"steps": 8, "block_length": 8}),
]
AB_NAME = "speed"
AB_SPEC = {"arms": {"fast": {"sampler": "threshold", "sampler_params": {"threshold": 0.05}},
                    "slow": {"sampler": "topk_confidence"}}}
# Grafana's variables, as a dashboard over the whole test would fill them in
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1s", "$__range": "5m",
                "$model": ".*"}

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None and not CI,
    reason="prometheus not installed (apt-get install prometheus; .ci/deps.sh)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float, procs=(), interval: float = 0.2):
    """Poll `check()` until it returns a truthy value; fail after `timeout` seconds, or at once
    if one of `procs` (name, Popen, log path) exited."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        for name, proc, log in procs:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                            f"{Path(log).read_text(errors='replace')[-4000:]}")
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, KeyError, ValueError) as e:
            last_error = e
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last error: {last_error!r})")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def prometheus_config_for(tmp_path: Path, target: str) -> Path:
    """The repo's prometheus.yml with the unmaskd job pointed at `target`, scraping every 1 s."""
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == "unmaskd"]
    assert len(jobs) == 1, "deploy/prometheus/prometheus.yml needs exactly one unmaskd job"
    jobs[0].update(scrape_interval="1s", scrape_timeout="1s",
                   static_configs=[{"targets": [target]}])
    cfg["scrape_configs"] = jobs
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and template variable, with Grafana's variables
    substituted."""
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "unmaskd.json").read_text())
    out = []
    panels = list(dash["panels"])
    while panels:
        panel = panels.pop(0)
        panels += panel.get("panels", [])
        for t in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {t['refId']}", t["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
        assert m, f"variable {var['name']}: only label_values(metric, label) is handled"
        out.append((f"variable {var['name']}", f"count by ({m.group(2)}) ({m.group(1)})"))
    substituted = []
    for where, expr in out:
        for var in sorted(GRAFANA_VARS, key=len, reverse=True):
            expr = expr.replace(var, GRAFANA_VARS[var])
        assert "$" not in expr, f"{where}: unsubstituted variable in {expr}"
        substituted.append((where, expr))
    return substituted


def test_dashboard_queries_are_found():
    queries = dashboard_queries()
    assert len(queries) >= 20
    assert any("unmaskd_generated_tokens_total" in q and "arm" in q for _, q in queries)


def test_prometheus_matches_clients(tiny_model_dir, tmp_path):
    if PROMETHEUS is None:
        pytest.fail("prometheus is missing under CI (.ci/deps.sh installs it)")
    server = prom = None
    port, prom_port = free_port(), free_port()
    base, prom_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}"
    server_log, prom_log = tmp_path / "server.log", tmp_path / "prometheus.log"
    exe = Path(sys.executable).parent / "unmaskd"
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "unmaskd.cli"]) + [
        "serve", "--model", str(tiny_model_dir), "--port", str(port), "--threads", "1",
        "--max-batch-size", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("UNMASKD_")}
    client = httpx.Client(timeout=60)
    started = time.monotonic()
    try:
        with server_log.open("w") as log:
            server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      cwd=tmp_path)
        config = prometheus_config_for(tmp_path, f"127.0.0.1:{port}")
        with prom_log.open("w") as log:
            prom = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        procs = [("unmaskd serve", server, server_log), ("prometheus", prom, prom_log)]

        def query(expr: str) -> list[dict]:
            r = client.get(f"{prom_url}/api/v1/query", params={"query": expr})
            body = r.json()
            assert r.status_code == 200 and body["status"] == "success", (expr, body)
            return body["data"]["result"]

        def by_label(expr: str, label: str) -> dict[str, float]:
            return {s["metric"].get(label, ""): float(s["value"][1]) for s in query(expr)}

        wait_for("/health", lambda: client.get(f"{base}/health").status_code == 200, 120, procs)
        wait_for("Prometheus ready", lambda: client.get(f"{prom_url}/-/ready").status_code == 200,
                 60, procs)
        wait_for("the unmaskd target up",
                 lambda: by_label('up{job="unmaskd"}', "job").get("unmaskd") == 1.0, 30, procs)

        r = client.put(f"{base}/ab/{AB_NAME}", json=AB_SPEC)
        assert r.status_code == 200, r.text

        responses: list[dict] = []

        def generate(body: dict) -> dict:
            r = client.post(f"{base}/generate", json={"prompt": PROMPT, "max_new_tokens": GEN,
                                                      **body})
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["finish_reason"] in ("stop", "length")
            # the canvas is GEN tokens, decided in nfe steps
            assert len(out["token_ids"]) == GEN
            assert math.isclose(out["tokens_per_step"] * out["nfe"], GEN, rel_tol=1e-9)
            responses.append(out)
            return out

        # users that put both arms to work (assignment is a stable hash of the user)
        ab_users: list[str] = []
        arms_seen: set[str] = set()
        for i in range(24):
            arm = generate({"ab": AB_NAME, "user": f"user-{i}"})["arm"]
            if arm not in arms_seen or len(ab_users) < 3:
                ab_users.append(f"user-{i}")
                arms_seen.add(arm)
            if arms_seen == set(AB_SPEC["arms"]) and len(ab_users) >= 3:
                break
        assert arms_seen == set(AB_SPEC["arms"]), arms_seen

        def expected() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
            tokens: dict[str, int] = {}
            steps: dict[str, int] = {}
            count: dict[str, int] = {}
            for out in responses:
                s = out["sampler"]
                tokens[s] = tokens.get(s, 0) + GEN
                steps[s] = steps.get(s, 0) + out["nfe"]
                count[s] = count.get(s, 0) + 1
            return tokens, steps, count

        def scraped_all() -> bool:
            tokens, steps, count = expected()
            return (by_label("sum by (sampler) (unmaskd_generated_tokens_total)", "sampler")
                    == tokens
                    and by_label("sum by (sampler) (unmaskd_denoise_steps_total)", "sampler")
                    == steps
                    and by_label('sum by (sampler) (unmaskd_requests_total{status=~"stop|length"})',
                                 "sampler") == count)

        # Two waves with a scrape between them: a series that first appears with its final
        # value has no increase for rate() to see; the second wave gives every series one.
        for wave in range(2):
            for sampler, extra in REQUESTS:
                for seed in range(3):
                    generate({"sampler": sampler, "seed": seed + 10 * wave, **extra})
            if wave == 1:
                for user in ab_users:
                    generate({"ab": AB_NAME, "user": user, "seed": 1})
            wait_for(f"Prometheus to scrape wave {wave + 1}", scraped_all, 30, procs)
        time.sleep(2.5)  # two more scrapes: gauges and step histograms settle

        # tokens/step per sampler in PromQL == what the clients were told
        tokens, steps, _ = expected()
        assert set(tokens) == {"threshold", "topk_confidence"}
        promql = by_label("sum by (sampler) (unmaskd_generated_tokens_total) / "
                          "sum by (sampler) (unmaskd_denoise_steps_total)", "sampler")
        assert set(promql) == set(tokens)
        for sampler in tokens:
            client_side = (sum(GEN for o in responses if o["sampler"] == sampler)
                           / sum(o["nfe"] for o in responses if o["sampler"] == sampler))
            assert abs(promql[sampler] - client_side) <= 1e-9, (sampler, promql, client_side)
        # the two samplers really differ, so a label mix-up could not pass
        assert promql["threshold"] != promql["topk_confidence"]

        # by arm too: the A/B panel's numbers
        arm_tps = by_label('sum by (arm) (unmaskd_generated_tokens_total{arm!=""}) / '
                           'sum by (arm) (unmaskd_denoise_steps_total{arm!=""})', "arm")
        for arm in AB_SPEC["arms"]:
            mine = [o for o in responses if o["arm"] == arm]
            assert abs(arm_tps[arm] - GEN * len(mine) / sum(o["nfe"] for o in mine)) <= 1e-9

        # every dashboard query parses, and returns finite numbers
        problems = []
        for where, expr in dashboard_queries():
            r = client.get(f"{prom_url}/api/v1/query", params={"query": expr})
            body = r.json()
            if r.status_code != 200 or body.get("status") != "success":
                problems.append(f"{where}: {body.get('errorType')}: {body.get('error')}\n  {expr}")
                continue
            result = body["data"]["result"]
            if not result:
                problems.append(f"{where}: empty result\n  {expr}")
            elif not all(math.isfinite(float(s["value"][1])) for s in result):
                problems.append(f"{where}: non-finite {[s['value'][1] for s in result]}\n  {expr}")
        assert not problems, "\n".join(problems)
        assert time.monotonic() - started < 240
    finally:
        client.close()
        stop(prom)
        stop(server)
