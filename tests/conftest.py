"""Shared fixtures: a tiny random LLaDA-format checkpoint built on the fly (never downloaded)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# Tests share 2 cores with whatever else runs; oversubscribed BLAS threads are slower.
torch.set_num_threads(int(os.environ.get("UNMASKD_TEST_THREADS", "1")))


def build_tiny_model(out: Path, d_model: int = 32, n_layers: int = 1, seed: int = 0) -> Path:
    from dllm.checkpoint import save_dllm
    from dllm.model import LLaDAModel
    from dllm.tokenizer import train_tokenizer
    from dllm.train import model_config

    tok = train_tokenizer(out, n_problems=2000)
    model = LLaDAModel(model_config(tok, d_model=d_model, n_layers=n_layers))
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
    from server.engine import Engine

    return Engine.from_dir(tiny_model_dir, default_gen_length=16)
