"""The KV cache under batching: rows at different blocks, prompt lengths, canvases and samplers
share a batch, and each request gets the same tokens as alone (for every cache mode). Exactness
against Fast-dLLM's own decoding is tests/test_cache_exact.py; this file is about batches."""

import pytest
import torch
from conftest import build_tiny_model
from unmaskd.engine.loop import Engine
from unmaskd.engine.sequence import GenerationRequest
from unmaskd.sampler_plugins.policy_net import PolicyNet
from unmaskd.sampler_plugins.policy_store import STORE, Policy


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    # Two layers: with one, a position's keys/values depend on its own token only, so a stale
    # cache would be exact and could not show a misplaced row.
    model_dir = build_tiny_model(tmp_path_factory.mktemp("two_layers"), n_layers=2)
    return {cache: Engine.from_dir(model_dir, default_gen_length=16, cache=cache)
            for cache in ("none", "prefix", "dual")}


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    STORE.add(Policy("cache-test", PolicyNet(("confidence", "margin")).eval(),
                     {"block_length": 4}))
    yield "cache-test"
    STORE.remove("cache-test")


def mixed_requests(engine, policy: str) -> list[GenerationRequest]:
    """Different prompt lengths, canvases, block lengths and samplers (greedy and sampled)."""
    texts = ["Question: Ava has 3 eggs.\nAnswer:", "Question: 12 + 5 =\nAnswer:",
             "Question: Bo buys 7 more pens than Cy. Cy has 2 pens. How many?\nAnswer:"]
    specs = [("topk_confidence", {}, 16, 4, None, 0.0), ("threshold", {"threshold": 0.5}, 16, 8,
                                                          None, 0.0),
             ("learned", {"policy": policy}, 16, 4, None, 0.0),
             ("klass", {}, 12, 4, None, 0.0), ("random", {}, 24, 8, 12, 0.7),
             ("eb", {}, 16, 16, None, 0.0), ("margin", {}, 8, 8, 4, 0.0),
             ("learned", {"policy": policy, "beta": 3.0}, 24, 24, None, 0.0)]
    return [GenerationRequest(engine.tokenizer(texts[i % 3])["input_ids"], name, params,
                              gen_length=L, block_length=B, steps=S, temperature=T, seed=i)
            for i, (name, params, L, B, S, T) in enumerate(specs)]


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_same_tokens_alone_batched_and_joining_mid_flight(engines, policy, cache):
    engine = engines[cache]
    reqs = mixed_requests(engine, policy)
    alone = [engine.generate([r])[0] for r in reqs]
    batched = engine.generate(reqs)
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert [r.nfe for r in batched] == [r.nfe for r in alone]
    # Requests join one per step, so rows sit at different blocks when the batch changes and
    # every cache is re-laid into a new batch layout several times.
    pending, ids, joined = list(enumerate(reqs)), {}, {}
    while pending or engine.active:
        if pending:
            i, r = pending.pop(0)
            ids[engine.add(r)] = i
        for res in engine.step().finished:
            joined[ids[res.request_id]] = res.token_ids
    assert [joined[i] for i in range(len(reqs))] == [r.token_ids for r in alone]


def test_cache_memory_is_per_row_and_freed(engines):
    engine = engines["dual"]
    ids = engine.tokenizer("Question: Ava has 3 eggs.\nAnswer:")["input_ids"]
    n_layers, heads, head_dim = engine.model.kv_layout
    engine.add(GenerationRequest(ids, "topk_confidence", gen_length=16, block_length=4))
    report = engine.step()
    # keys and values, every layer, every column of the batch layout plus the scratch column
    per_column = 2 * n_layers * heads * head_dim * 4
    assert report.cache_bytes == per_column * (len(ids) + 16 + 1)
    while engine.active:
        report = engine.step()
    assert report.cache_bytes == 0 and engine.cache_bytes == 0
    assert engines["none"].generate([GenerationRequest(ids)])[0].nfe > 0
    assert engines["none"].cache_bytes == 0


def test_server_reports_its_cache(engines, tiny_model_dir):
    from fastapi.testclient import TestClient
    from unmaskd.server.app import create_app
    from unmaskd.server.settings import ServerSettings

    app = create_app(ServerSettings(model=tiny_model_dir, cache="dual"), engines["dual"])
    with TestClient(app) as client:
        assert client.get("/health").json() == {"status": "ok", "cache": "dual"}
        r = client.post("/generate", json={"prompt": "Question: 1\nAnswer:",
                                           "max_new_tokens": 8})
        assert r.status_code == 200, r.text
        text = client.get("/metrics").text
    assert 'unmaskd_engine_info{cache="dual"' in text
    assert "unmaskd_kv_cache_bytes{" in text
