"""Shared fixtures: a tiny random LLaDA-format checkpoint built on the fly (never downloaded), and
real `unmaskd serve` processes on loopback for the server tests.

The server tests use the same tiny model with a 1024-token context (`long_model_dir`): requests
are fast by default, and a test that needs a slow one asks for a long canvas decoded one token
per step (a 512-token canvas takes seconds).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

# sglang lives in .venv-sglang, not in this suite's environment: test_sglang_env.py runs
# test_sglang_plugin.py there.
collect_ignore = [] if importlib.util.find_spec("sglang") else ["test_sglang_plugin.py"]
# Tests share 2 cores with whatever else runs; oversubscribed BLAS threads are slower.
torch.set_num_threads(int(os.environ.get("UNMASKD_TEST_THREADS", "1")))
# Weight digests (the policy fingerprint's cache) go to a private folder, not the user's cache;
# servers the tests start inherit it.
os.environ["UNMASKD_CACHE_DIR"] = tempfile.mkdtemp(prefix="unmaskd-test-cache-")


@pytest.fixture(autouse=True)
def _policy_store_restored() -> Iterator[None]:
    """The learned sampler's store is process-wide: whatever a test loads into it (an in-process
    `serve` loads the shipped model's policies) is gone before the next test in the worker."""
    from unmaskd.sampler_plugins.policy_store import STORE

    saved = (dict(STORE.policies), dict(STORE.skipped), dict(STORE.other_model))
    yield
    STORE.policies, STORE.skipped, STORE.other_model = saved


def build_tiny_model(out: Path, d_model: int = 32, n_layers: int = 1, seed: int = 0,
                     max_sequence_length: int | None = None) -> Path:
    from unmaskd.dllm.checkpoint import save_dllm
    from unmaskd.dllm.llada import LLaDAModel
    from unmaskd.training.dllm_trainer import model_config
    from unmaskd.training.tokenizer import train_tokenizer

    tok = train_tokenizer(out, n_problems=2000)
    cfg = model_config(tok, d_model=d_model, n_layers=n_layers)
    if max_sequence_length is not None:
        cfg.max_sequence_length = max_sequence_length
    model = LLaDAModel(cfg)
    model.init_weights(std=0.5, seed=seed)  # large init: peaked, varied confidences
    save_dllm(model, out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llada"))


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy a test may corrupt."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from unmaskd.engine.loop import Engine

    return Engine.from_dir(tiny_model_dir, default_gen_length=16)


@pytest.fixture(scope="session")
def long_model_dir(tmp_path_factory) -> Path:
    """The tiny model with a 1024-token context, for tests that need slow requests."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llada_long"), max_sequence_length=1024)


@pytest.fixture(scope="session")
def tiny_sdar_dir(tmp_path_factory) -> Path:
    """A tiny random SDAR checkpoint folder (tests/blockdiff_reference.py builds it)."""
    from blockdiff_reference import build_tiny_sdar

    return build_tiny_sdar(tmp_path_factory.mktemp("tiny_sdar"))


@pytest.fixture(scope="session")
def tiny_llada2_dir(tmp_path_factory) -> Path:
    """A tiny random LLaDA2 MoE checkpoint folder (tests/blockdiff_reference.py builds it)."""
    from blockdiff_reference import build_tiny_llada2

    return build_tiny_llada2(tmp_path_factory.mktemp("tiny_llada2"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(model_dir: Path, log_dir: Path, *args: str,
                 env: dict[str, str] | None = None, wait: float = 90.0) -> ServerProcess:
    """`unmaskd serve --model DIR --port FREE --threads 1 ARGS`, once /health answers 200."""
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "unmaskd.cli", "serve", "--model", str(model_dir),
           "--port", str(port), "--threads", "1", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                cwd=Path(__file__).parent.parent)
    return wait_healthy(ServerProcess(proc, f"http://127.0.0.1:{port}", log_path), wait)


def wait_healthy(server: ServerProcess, wait: float = 90.0) -> ServerProcess:
    """`server` once its /health answers 200; RuntimeError with its log if it exits first or is
    not healthy within `wait` seconds (then it is stopped)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become healthy in {wait} s:\n{server.log()}")


@pytest.fixture(scope="session")
def launch_server(long_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Callable[..., ServerProcess]]:
    """`launch_server(*args, env=None)` starts a server on `long_model_dir`; any still running
    at the end of the session are stopped."""
    log_dir = tmp_path_factory.mktemp("server_logs")
    started: list[ServerProcess] = []

    def launch(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = start_server(long_model_dir, log_dir, *args, env=env)
        started.append(server)
        return server

    yield launch
    for server in started:
        server.stop(timeout=5)
