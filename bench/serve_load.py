"""Serving load test: concurrent clients against `unmaskd serve` over loopback, then the same
load against a second server started with --max-batch-size 1, and the ratio between the two
(what step-level continuous batching buys).

    .venv/bin/python bench/serve_load.py --requests 200 --concurrency 16
    .venv/bin/python bench/serve_load.py --model /tmp/model --requests 8 --concurrency 4
    .venv/bin/python bench/serve_load.py --url http://127.0.0.1:8000 --requests 100
    .venv/bin/python bench/serve_load.py --caches none,prefix,dual --concurrency 32 \
        --sampler topk_confidence

With --caches, one server per KV-cache mode (same batch size) replaces the batch-1 baseline.

With --url the load goes to a running server and no baseline is started (give --baseline-url
to compare against another running server). Each client sends /generate requests for test-split
arithmetic problems back to back until --requests have been sent. Reported per server:
requests/s, canvas tokens/s (gen_length per completed request), p50/p99 latency, and the mean
batch size per denoising step from the server's /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from unmaskd.dllm import EMBEDDED_MODEL_DIR
from unmaskd.tasks.arithmetic import make_split


@dataclass
class LoadResult:
    label: str
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    tokens_per_s: float
    p50_latency_s: float
    p99_latency_s: float
    mean_batch_size: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, max_batch_size: int, threads: int,
                 cache: str = "none") -> tuple[subprocess.Popen, str]:
    """`unmaskd serve` on a free loopback port; returns once /health answers 200."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "unmaskd.cli", "serve", "--model", str(model),
         "--port", str(port),
         "--max-batch-size", str(max_batch_size), "--max-queue", "100000",
         "--threads", str(threads), "--cache", cache],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become healthy within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def batch_counters(url: str, headers: dict[str, str]) -> tuple[float, float]:
    """(sum, count) of the unmaskd_batch_size histogram: rows decoded, steps taken."""
    text = httpx.get(url + "/metrics", headers=headers, timeout=10).text
    found = {"unmaskd_batch_size_sum": 0.0, "unmaskd_batch_size_count": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in found:
                found[sample.name] += sample.value
    return found["unmaskd_batch_size_sum"], found["unmaskd_batch_size_count"]


async def run_load(url: str, bodies: list[dict], concurrency: int, headers: dict[str, str],
                   timeout_s: float) -> tuple[list[float], int, int, float]:
    """Send every body once from `concurrency` clients; (latencies, tokens, errors, wall)."""
    queue = list(reversed(bodies))
    latencies: list[float] = []
    tokens = errors = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens, errors
        while queue:
            body = queue.pop()
            t0 = time.perf_counter()
            try:
                r = await http.post("/generate", json=body)
            except httpx.HTTPError:
                errors += 1
                continue
            if r.status_code != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            tokens += len(r.json()["token_ids"])

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s,
                                 limits=limits) as http:
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client(http) for _ in range(concurrency))),
                               timeout_s)
        wall = time.perf_counter() - start
    return latencies, tokens, errors, wall


def measure(label: str, url: str, bodies: list[dict], args: argparse.Namespace) -> LoadResult:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    rows0, steps0 = batch_counters(url, headers)
    latencies, tokens, errors, wall = asyncio.run(
        run_load(url, bodies, args.concurrency, headers, args.timeout))
    rows1, steps1 = batch_counters(url, headers)
    lat = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    return LoadResult(
        label=label, requests=len(latencies), errors=errors, wall_s=wall,
        requests_per_s=len(latencies) / wall, tokens_per_s=tokens / wall,
        p50_latency_s=float(np.percentile(lat, 50)), p99_latency_s=float(np.percentile(lat, 99)),
        mean_batch_size=(rows1 - rows0) / max(1.0, steps1 - steps0))


def print_table(results: list[LoadResult]) -> None:
    print(f"{'server':<22} {'req':>5} {'err':>4} {'req/s':>8} {'tok/s':>9} {'p50 s':>8} "
          f"{'p99 s':>8} {'batch':>6}")
    for r in results:
        print(f"{r.label:<22} {r.requests:>5} {r.errors:>4} {r.requests_per_s:>8.2f} "
              f"{r.tokens_per_s:>9.1f} {r.p50_latency_s:>8.3f} {r.p99_latency_s:>8.3f} "
              f"{r.mean_batch_size:>6.2f}")
    base = results[-1] if len(results) == 2 else results[0]  # batch 1, or the first cache
    for a in results:
        if a is not base:
            print(f"throughput ratio ({a.label} / {base.label}): "
                  f"{a.requests_per_s / base.requests_per_s:.2f}x; p50 latency ratio: "
                  f"{a.p50_latency_s / base.p50_latency_s:.2f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=EMBEDDED_MODEL_DIR)
    ap.add_argument("--url", help="target this running server instead of starting one")
    ap.add_argument("--baseline-url", help="with --url: a running server to compare against")
    ap.add_argument("--api-key", help="Bearer key for servers given by URL")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-batch-size", type=int, default=32, help="of the started server")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--sampler", default=None, help="default: the server's default")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per started server")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for one server's run")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--caches", help="comma-separated cache modes, one started server each")
    args = ap.parse_args(argv)

    problems = make_split("test", args.requests)
    # stop_at_eos off: every request decodes its whole canvas, as docs/BENCHMARKS.md's serving
    # rows were measured (the server's default since issue 26 ends at the answer's EOS)
    bodies = [{"prompt": p.prompt, "max_new_tokens": args.max_new_tokens, "seed": i,
               "stop_at_eos": False, **({"sampler": args.sampler} if args.sampler else {})}
              for i, p in enumerate(problems)]
    results = []
    if args.url:
        results.append(measure("target", args.url, bodies, args))
        if args.baseline_url:
            results.append(measure("baseline", args.baseline_url, bodies, args))
    else:
        runs = ([(f"cache {c}", args.max_batch_size, c) for c in args.caches.split(",")]
                if args.caches else
                [(f"max-batch-size {args.max_batch_size}", args.max_batch_size, "none"),
                 ("max-batch-size 1", 1, "none")])
        for label, batch, cache in runs:
            proc, url = start_server(args.model, batch, args.threads, cache)
            try:
                results.append(measure(label, url, bodies, args))
            finally:
                stop_server(proc)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
