"""The engine's decodes, with and without a KV cache, equal an independent reference token for
token and NFE for NFE.

The reference (tests/fastdllm_reference.py) is LLaDA's `generate` and Fast-dLLM's
`generate_with_prefix_cache` / `generate_with_dual_cache` at temperature 0, written from the
published algorithms with its own LLaDA forward. The grid: tiny random checkpoints (one with
grouped-query attention) x cache none / prefix / dual x topk_confidence at every number of steps
per block / threshold at three levels x prompts x canvas and block lengths.

Caching is an approximation for a bidirectional model, so on these random models the cached
decodes differ from the uncached ones in many cases; a test below keeps it that way, so an engine
that ignored its cache could not pass.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fastdllm_reference import ReferenceLLaDA, decode
from unmaskd.engine.loop import Engine, GenerationRequest

CACHES = ("none", "prefix", "dual")
PROMPTS = ("Question: Ava has 3 apples. She buys 4 more apples. How many apples does Ava have?"
           "\nAnswer:", "7 + 8 =")
SHAPES = ((16, 4), (12, 3), (8, 8))  # (gen_length, block_length): 4, 4 and 1 blocks
THRESHOLDS = (0.3, 0.5, 0.9)  # 0.3 commits several per step on these models; 0.9 mostly one


@dataclass(frozen=True)
class Case:
    prompt: str
    gen_length: int
    block_length: int
    steps: int
    sampler: str
    threshold: float | None = None

    def __str__(self) -> str:
        rule = (f"threshold={self.threshold}" if self.sampler == "threshold"
                else f"topk steps={self.steps}")
        return f"{rule} L={self.gen_length} B={self.block_length} prompt={self.prompt[:12]!r}"

    def request(self, prompt_ids: list[int]) -> GenerationRequest:
        params = {} if self.threshold is None else {"threshold": self.threshold}
        return GenerationRequest(prompt_ids=prompt_ids, sampler=self.sampler,
                                 sampler_params=params, gen_length=self.gen_length,
                                 block_length=self.block_length, steps=self.steps)


def grid(prompts: tuple[str, ...] = PROMPTS) -> list[Case]:
    cases = []
    for prompt in prompts:
        for gen_length, block_length in SHAPES:
            n_blocks = gen_length // block_length
            for per_block in range(1, block_length + 1):
                cases.append(Case(prompt, gen_length, block_length, per_block * n_blocks,
                                  "topk_confidence"))
            # Threshold ignores steps in Fast-dLLM; steps = gen_length (the engine's default)
            # is a budget the engine can never reach, so its last-step rule never fires.
            for threshold in THRESHOLDS:
                cases.append(Case(prompt, gen_length, block_length, gen_length, "threshold",
                                  threshold))
    return cases


# name -> (d_model, seed, n_kv_heads or None); all two layers, four heads.
MODELS = {"d32": (32, 0, None), "d64": (64, 1, None), "gqa": (64, 2, 2)}
# The GQA model gets one prompt to keep the file quick; its point is the cache's KV-head layout.
MODEL_PROMPTS = {"d32": PROMPTS, "d64": PROMPTS, "gqa": PROMPTS[:1]}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    from conftest import build_tiny_model
    from unmaskd.dllm.checkpoint import read_config, save_dllm
    from unmaskd.dllm.llada import LLaDAConfig, LLaDAModel

    root = tmp_path_factory.mktemp("cache_exact")
    dirs = {}
    for name, (d_model, seed, n_kv_heads) in MODELS.items():
        out = root / name
        if n_kv_heads is None:
            dirs[name] = build_tiny_model(out, d_model=d_model, n_layers=2, seed=seed)
            continue
        # build_tiny_model has no n_kv_heads; reuse the d64 model's tokenizer (training one
        # costs seconds) with fresh weights in a grouped-query layout.
        base = dirs["d64"]
        raw = {**read_config(base), "n_kv_heads": n_kv_heads}
        raw.pop("architectures")
        model = LLaDAModel(LLaDAConfig.from_dict(raw))
        model.init_weights(std=0.5, seed=seed)
        save_dllm(model, out)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(base / f, out / f)
        dirs[name] = out
    return dirs


def make_engine(model_dir: Path, cache: str) -> Engine:
    return Engine.from_dir(model_dir, cache=cache)


@pytest.fixture(scope="module")
def prompt_ids(model_dirs) -> dict[str, dict[str, list[int]]]:
    """Token ids per model and prompt, from the engine's tokenizer as the CLI makes them."""
    out = {}
    for name, d in model_dirs.items():
        tok = make_engine(d, "none").tokenizer
        out[name] = {p: tok(p)["input_ids"] for p in PROMPTS}
    return out


@pytest.fixture(scope="module")
def reference(model_dirs, prompt_ids):
    """reference(model, case, cache) -> (canvas ids, nfe), each decode computed once."""
    models = {name: ReferenceLLaDA(d) for name, d in model_dirs.items()}
    memo: dict[tuple[str, Case, str], tuple[list[int], int]] = {}

    def run(name: str, case: Case, cache: str) -> tuple[list[int], int]:
        key = (name, case, cache)
        if key not in memo:
            memo[key] = decode(models[name], prompt_ids[name][case.prompt], case.gen_length,
                               case.block_length, case.steps, case.sampler, case.threshold,
                               cache)
        return memo[key]

    run.models = models
    return run


def mismatches(cases, got, want) -> list[str]:
    return [f"{case}: engine nfe {g[1]} tokens {g[0]}\n{' ' * len(str(case))}  reference nfe "
            f"{w[1]} tokens {w[0]}" for case, g, w in zip(cases, got, want) if g != w]


# ---- the reference checks itself ------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_reference_forward_matches_unmaskd_model(model_dirs, prompt_ids, reference, name):
    """Two independent LLaDA forwards agree, so a mismatch below is about decoding."""
    from unmaskd.dllm.checkpoint import load_dllm

    model, _ = load_dllm(model_dirs[name])
    ids = prompt_ids[name][PROMPTS[0]] + [model.config.mask_token_id] * 8
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0]
    got, _ = reference.models[name].forward(ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_reference_cached_forward_is_exact_on_unchanged_tokens(prompt_ids, reference):
    """With a cache from the very same tokens, the prefix (block to the end) and dual (block
    only) forwards give the full forward's logits: absolute RoPE positions, nothing masked."""
    ref = reference.models["gqa"]
    ids = prompt_ids["gqa"][PROMPTS[0]] + [ref.mask_id] * 12
    full, kv = ref.forward(ids)
    start = len(ids) - 8
    prefix, _ = ref.forward(ids[start:], start, kv)
    dual, _ = ref.forward(ids[start:start + 4], start, kv)
    torch.testing.assert_close(prefix, full[start:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dual, full[start:start + 4], atol=1e-5, rtol=1e-5)


def test_cached_reference_differs_from_uncached(reference):
    """Caching changes decodes on these models (else the engine tests could not tell a cache
    from none), except at one step per block, where every mode runs only block-start forwards
    and a block filled by its block-start forward costs nothing more."""
    differ = {"prefix": 0, "dual": 0, "prefix vs dual": 0}
    for name in MODELS:
        for case in grid(MODEL_PROMPTS[name]):
            none, prefix, dual = (reference(name, case, c) for c in CACHES)
            differ["prefix"] += prefix != none
            differ["dual"] += dual != none
            differ["prefix vs dual"] += prefix != dual
            if case.sampler == "topk_confidence" and case.steps * case.block_length == \
                    case.gen_length:
                assert none == prefix == dual and none[1] == case.steps, case
    assert all(n >= 5 for n in differ.values()), differ


# ---- the engine against the reference -------------------------------------------------------
@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("name", MODELS)
def test_engine_matches_reference(model_dirs, prompt_ids, reference, name, cache):
    """One request at a time (Fast-dLLM's setting: batch size 1)."""
    engine = make_engine(model_dirs[name], cache)
    cases = grid(MODEL_PROMPTS[name])
    got = []
    for case in cases:
        (result,) = engine.generate([case.request(prompt_ids[name][case.prompt])])
        got.append((result.token_ids, result.nfe))
    want = [reference(name, case, cache) for case in cases]
    bad = mismatches(cases, got, want)
    assert not bad, f"{len(bad)}/{len(cases)} differ ({name}, cache {cache}):\n" + \
        "\n".join(bad[:8])


@pytest.mark.parametrize("cache", CACHES)
def test_engine_batched_matches_reference(model_dirs, prompt_ids, reference, cache):
    """The whole grid in one batch: rows of different prompts, lengths and samplers, at
    different blocks and steps, each decode as if alone."""
    engine = make_engine(model_dirs["d64"], cache)
    cases = grid()
    results = engine.generate([case.request(prompt_ids["d64"][case.prompt]) for case in cases])
    got = [(r.token_ids, r.nfe) for r in results]
    want = [reference("d64", case, cache) for case in cases]
    bad = mismatches(cases, got, want)
    assert not bad, f"{len(bad)}/{len(cases)} differ (batched, cache {cache}):\n" + \
        "\n".join(bad[:8])


@pytest.mark.parametrize(("cache", "sampler_args", "steps"), [
    ("none", ["--sampler", "threshold", "--param", "threshold=0.5"], 16),
    ("prefix", ["--sampler", "topk_confidence"], 8),
    ("dual", ["--sampler", "threshold", "--param", "threshold=0.3"], 16),
])
def test_cli_generate_matches_reference(model_dirs, reference, capsys, cache, sampler_args,
                                        steps):
    """`unmaskd generate --cache ... --json` prints the reference's canvas and NFE."""
    from unmaskd.cli.main import main

    threshold = float(sampler_args[-1].split("=")[1]) if "threshold" in sampler_args else None
    case = Case(PROMPTS[0], 16, 4, steps, sampler_args[1], threshold)
    argv = ["generate", "--model", str(model_dirs["d64"]), "--cache", cache, *sampler_args,
            "--gen-length", "16", "--block-length", "4", "--steps", str(steps),
            "--temperature", "0", "--json", "--prompt", PROMPTS[0]]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["token_ids"], out["nfe"]) == reference("d64", case, cache)
