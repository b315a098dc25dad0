"""Batch invariance, every sampler by every cache mode: a request decodes the same tokens in the
same number of steps alone, in one batch with all the others, and while its neighbours join
and leave mid-decode.

On the shipped embedded model (LLaDA) with its shipped policies: it is trained and confident,
so KLASS's stability rule and the learned policies make real decisions. (On a tiny random model
KLASS at its defaults rarely passes its confidence bar and falls back to one token per step,
which is why test_engine_cache.py did not catch its dual-cache bug: the padded query slots of a
row whose slice is shorter than its neighbours' leaked their logits into KLASS's
distributions.) And on a tiny SDAR checkpoint (block-diffusion: blocks aligned to position 0,
slices of one or two blocks), with KLASS's bars lowered so that its rule fires there too.
"""

import pytest
import torch
from blockdiff_reference import prompts as sdar_prompts
from unmaskd.dllm import EMBEDDED_MODEL_DIR
from unmaskd.engine.loop import Engine
from unmaskd.engine.model_args import load_policies
from unmaskd.engine.sequence import GenerationRequest
from unmaskd.sampler_plugins import registered_samplers
from unmaskd.sampler_plugins.policy_net import PolicyNet
from unmaskd.sampler_plugins.policy_store import STORE, Policy
from unmaskd.tasks.arithmetic import make_split

# Each sampler twice, in different shapes: (params, gen_length, block_length, steps,
# temperature). Canvases and blocks differ across the batch, so rows' cached slices have
# different widths; steps stay below one per position to keep the test fast.
SPECS = {
    "random": [({}, 48, 12, 16, 0.0), ({}, 24, 6, 12, 0.7)],
    "topk_confidence": [({}, 48, 12, 24, 0.0), ({}, 36, 12, 18, 0.7)],
    "threshold": [({"threshold": 0.7}, 48, 12, None, 0.0), ({}, 24, 24, None, 0.7)],
    "factor": [({}, 48, 48, None, 0.0), ({"factor": 2.0}, 36, 12, None, 0.0)],
    "maskgit_plus": [({}, 48, 48, 12, 0.0), ({}, 24, 6, 12, 0.0)],
    "margin": [({}, 36, 12, 12, 0.0), ({}, 48, 48, 16, 0.7)],
    "entropy": [({}, 24, 24, 8, 0.0), ({}, 48, 12, 16, 0.0)],
    "eb": [({}, 48, 12, None, 0.0), ({"gamma": 1.0}, 24, 6, None, 0.7)],
    "klass": [({}, 48, 12, None, 0.0), ({"conf": 0.6, "history": 1}, 36, 12, None, 0.0),
              ({"conf": 0.5, "kl": 0.05}, 24, 6, None, 0.0)],
    "learned": [({}, 48, 12, None, 0.0), ({"beta": 2.0}, 48, 48, None, 0.0)],
}


# The tiny SDAR model: canvases of 8-16 in blocks of 4 and 8 (its trained block is 4), step
# budgets per block (None: one step per position); KLASS's and the policy's bars set where a
# random model's confidences reach them.
SDAR_SPECS = {
    "random": [({}, 12, 4, 2, 0.7)], "topk_confidence": [({}, 16, 8, 3, 0.0)],
    "threshold": [({"threshold": 0.3}, 16, 4, None, 0.0)], "factor": [({}, 12, 8, None, 0.0)],
    "maskgit_plus": [({}, 8, 4, 2, 0.0)], "margin": [({}, 16, 8, 4, 0.7)],
    "entropy": [({}, 12, 4, None, 0.0)], "eb": [({"gamma": 2.0}, 16, 8, None, 0.0)],
    "klass": [({"conf": 0.3, "kl": 0.5, "history": 1}, 16, 4, None, 0.0),
              ({"conf": 0.2, "kl": 1.0, "history": 1}, 16, 8, None, 0.0),
              ({"conf": 0.3, "kl": 0.5, "history": 1}, 16, 4, None, 0.0)],
    "learned": [({"policy": "sdar-random", "beta": 3.0}, 16, 4, None, 0.0)],
}


@pytest.fixture(scope="module")
def embedded_engines():
    loaded = load_policies(EMBEDDED_MODEL_DIR / "policies", EMBEDDED_MODEL_DIR)
    assert loaded, "the embedded model's policies did not load"
    yield {cache: Engine.from_dir(EMBEDDED_MODEL_DIR, cache=cache)
           for cache in ("none", "prefix", "dual")}
    for name in loaded:
        STORE.remove(name)


@pytest.fixture(scope="module")
def sdar_policy():
    torch.manual_seed(0)
    STORE.add(Policy("sdar-random", PolicyNet(("confidence",)).eval(), {"block_length": 4}))
    yield
    STORE.remove("sdar-random")


def embedded_requests(engine: Engine) -> list[GenerationRequest]:
    """Every sampler, in several canvases, blocks and prompt lengths, greedy and sampled."""
    prompts = [engine.tokenizer(p.prompt)["input_ids"] for p in make_split("validation", 5)]
    specs = [(name, *spec) for name, shapes in SPECS.items() for spec in shapes]
    return [GenerationRequest(prompts[i % len(prompts)], name, params, gen_length=L,
                              block_length=B, steps=S, temperature=T, seed=i)
            for i, (name, params, L, B, S, T) in enumerate(specs)]


def sdar_requests(model_dir) -> list[GenerationRequest]:
    """Every sampler on prompts with and without a partial first block."""
    prompts = sdar_prompts(model_dir)
    specs = [(name, *spec) for name, shapes in SDAR_SPECS.items() for spec in shapes]
    return [GenerationRequest(prompts[i % len(prompts)], name, params, gen_length=L,
                              block_length=B, steps_per_block=S, temperature=T, seed=i)
            for i, (name, params, L, B, S, T) in enumerate(specs)]


@pytest.mark.parametrize("specs", [SPECS, SDAR_SPECS])
def test_every_registered_sampler_is_covered(specs):
    assert set(registered_samplers()) <= set(specs)


def decode_joining_one_per_step(engine: Engine, reqs: list[GenerationRequest]) -> list:
    """Requests join one per step while earlier ones finish and leave: every row is re-laid
    into a new batch layout (and its cache with it) many times, at different blocks."""
    pending, ids, results = list(enumerate(reqs)), {}, {}
    while pending or engine.active:
        if pending:
            i, r = pending.pop(0)
            ids[engine.add(r)] = i
        for res in engine.step().finished:
            results[ids[res.request_id]] = res
    return [results[i] for i in range(len(reqs))]


def assert_batch_invariant(engine: Engine, reqs: list[GenerationRequest]) -> None:
    alone = [(r.token_ids, r.nfe) for r in (engine.generate([q])[0] for q in reqs)]
    runs = {"one batch": engine.generate(reqs),
            "joining": decode_joining_one_per_step(engine, reqs)}
    for how, results in runs.items():
        got = [(r.token_ids, r.nfe) for r in results]
        wrong = [(q.sampler, q.sampler_params, a[1], g[1])
                 for q, a, g in zip(reqs, alone, got) if a != g]
        assert not wrong, f"{how}: (sampler, params, nfe alone, nfe here) {wrong}"


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_every_sampler_and_cache_is_batch_invariant(embedded_engines, cache):
    engine = embedded_engines[cache]
    assert_batch_invariant(engine, embedded_requests(engine))


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_every_sampler_and_cache_is_batch_invariant_on_block_diffusion(tiny_sdar_dir,
                                                                       sdar_policy, cache):
    engine = Engine.from_dir(tiny_sdar_dir, cache=cache)
    assert_batch_invariant(engine, sdar_requests(tiny_sdar_dir))
