"""The decoding engine: published reference loops, invariants, batching, stop_at_eos."""

import pytest
import torch
import unmaskd.sampler_plugins.registry as registry
from unmaskd.engine.sequence import GenerationRequest, InvalidRequest
from unmaskd.evaluation.evaluate import nfe_if_stopped_at_eos
from unmaskd.sampler_plugins import Sampler, StepView
from unmaskd.tasks.arithmetic import make_split

ALL = ["random", "topk_confidence", "threshold", "factor", "margin", "entropy", "eb", "klass"]


def prompts(engine, n=3):
    return [engine.tokenizer(p.prompt)["input_ids"] for p in make_split("validation", n)]


def llada_reference(model, prompt, gen_length, block_length, steps, mask_id):
    """LLaDA's published generate() (low-confidence remasking, temperature 0), with the mask
    token excluded from proposals as the engine does."""
    x = torch.full((1, len(prompt) + gen_length), mask_id, dtype=torch.long)
    x[0, :len(prompt)] = torch.tensor(prompt)
    P, n_blocks = len(prompt), gen_length // block_length
    steps_per_block = steps // n_blocks
    for b in range(n_blocks):
        block_mask = x[:, P + b * block_length: P + (b + 1) * block_length] == mask_id
        count = block_mask.sum(1, keepdim=True)
        k_sched = (count // steps_per_block).repeat(1, steps_per_block)
        k_sched[:, : int(count % steps_per_block)] += 1
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = model(x)
            logits[..., mask_id] = float("-inf")
            x0 = logits.argmax(-1)
            p = torch.softmax(logits.double(), -1)
            x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
            x0_p[:, P + (b + 1) * block_length:] = float("-inf")
            confidence = torch.where(mask_index, x0_p, torch.tensor(float("-inf")))
            idx = torch.topk(confidence[0], k=int(k_sched[0, i])).indices
            x[0, idx] = x0[0, idx]
    return x[0, P:].tolist()


def fast_dllm_threshold_reference(model, prompt, gen_length, block_length, threshold, mask_id):
    """Fast-dLLM's generate() with confidence-threshold parallel decoding (no cache)."""
    x = torch.full((1, len(prompt) + gen_length), mask_id, dtype=torch.long)
    x[0, :len(prompt)] = torch.tensor(prompt)
    P, nfe = len(prompt), 0
    for b in range(gen_length // block_length):
        end = P + (b + 1) * block_length
        while (x[:, P + b * block_length: end] == mask_id).any():
            mask_index = x == mask_id
            mask_index[:, end:] = False
            logits = model(x)
            nfe += 1
            logits[..., mask_id] = float("-inf")
            x0 = logits.argmax(-1)
            p = torch.softmax(logits.double(), -1)
            x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
            confidence = torch.where(mask_index, x0_p, torch.tensor(float("-inf")))
            k = int(mask_index.sum())
            values, idx = torch.topk(confidence[0], k=k)
            keep = torch.ones(k, dtype=torch.bool)
            keep[1:] = values[1:] >= threshold  # Fast-dLLM drops only those below
            x[0, idx[keep]] = x0[0, idx[keep]]
    return x[0, P:].tolist(), nfe


@torch.no_grad()
def test_topk_confidence_matches_llada_reference(tiny_engine):
    for ids in prompts(tiny_engine, 2):
        for block_length, steps in [(4, 16), (16, 8), (8, 4)]:
            (res,) = tiny_engine.generate([GenerationRequest(
                ids, "topk_confidence", gen_length=16, block_length=block_length, steps=steps)])
            ref = llada_reference(tiny_engine.model, ids, 16, block_length, steps,
                                  tiny_engine.mask_id)
            assert res.token_ids == ref and res.nfe == steps


@torch.no_grad()
def test_threshold_matches_fast_dllm_reference(tiny_engine):
    for ids in prompts(tiny_engine, 2):
        for block_length, threshold in [(4, 0.9), (16, 0.5), (8, 0.2)]:
            (res,) = tiny_engine.generate([GenerationRequest(
                ids, "threshold", {"threshold": threshold}, gen_length=16,
                block_length=block_length)])
            ref, nfe = fast_dllm_threshold_reference(tiny_engine.model, ids, 16, block_length,
                                                     threshold, tiny_engine.mask_id)
            assert res.token_ids == ref and res.nfe == nfe


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_mixed_batch_equals_single_requests(tiny_engine, temperature):
    reqs = [GenerationRequest(ids, name, gen_length=gl, block_length=gl // 2, steps=gl,
                              temperature=temperature, seed=10 * i + j)
            for i, ids in enumerate(prompts(tiny_engine, 2))
            for j, (name, gl) in enumerate(zip(ALL, [16, 8, 16, 12, 16, 8, 12, 16]))]
    batched = tiny_engine.generate(reqs)
    for req, res in zip(reqs, batched):
        (alone,) = tiny_engine.generate([req])
        assert alone.token_ids == res.token_ids and alone.nfe == res.nfe, req.sampler


def test_results_are_consistent(tiny_engine):
    ids = prompts(tiny_engine, 1)[0]
    for name in ALL:
        (r,) = tiny_engine.generate([GenerationRequest(ids, name, gen_length=16, block_length=4,
                                                       steps=8)])
        assert r.nfe <= 8 and sum(r.step_counts) == 16 and min(r.step_counts) >= 1
        assert tiny_engine.mask_id not in r.token_ids
        assert r.tokens_per_step == pytest.approx(16 / r.nfe)
        # blocks are decoded in order: every position of block k is committed before block k+1
        block_last = [max(r.trace[b * 4:(b + 1) * 4]) for b in range(4)]
        block_first = [min(r.trace[b * 4:(b + 1) * 4]) for b in range(4)]
        assert all(block_last[b] < block_first[b + 1] for b in range(3))


class Misbehaving(Sampler):
    """Returns nothing, or everything (including committed and out-of-block positions)."""

    name = "misbehaving"

    def select(self, view: StepView) -> torch.Tensor:
        if int(view.nfe[0]) % 2:
            return torch.ones_like(view.candidate)
        return torch.zeros_like(view.candidate)


def test_engine_enforces_invariants_whatever_the_sampler_returns(tiny_engine, monkeypatch):
    monkeypatch.setitem(registry.registered_samplers(), "misbehaving", Misbehaving)
    ids = prompts(tiny_engine, 1)[0]
    (r,) = tiny_engine.generate([GenerationRequest(ids, "misbehaving", gen_length=16,
                                                   block_length=8, steps=8, watch=True)])
    # step 0 commits the single most confident; step 1 the rest of block 0 (not block 1)
    assert r.step_counts[0] == 1 and r.step_counts[1] == 7 and r.nfe <= 8
    assert sorted(r.trace[:8]) == [0] + [1] * 7 and min(r.trace[8:]) >= 2


def test_step_budget_forces_completion(tiny_engine):
    ids = prompts(tiny_engine, 1)[0]
    # factor this small commits one position per step, so the last step of each block of 8
    # (2 steps per block) must take the other 7
    (r,) = tiny_engine.generate([GenerationRequest(ids, "factor", {"factor": 1e-6},
                                                   gen_length=16, block_length=8, steps=4)])
    assert r.step_counts == [1, 7, 1, 7]


def test_threshold_never_commits_fewer_than_the_schedule(tiny_engine):
    """The block-diffusion families' floor: with 2 steps per block of 8, at least 4 per step,
    even when nothing reaches the threshold."""
    ids = prompts(tiny_engine, 1)[0]
    (r,) = tiny_engine.generate([GenerationRequest(ids, "threshold", {"threshold": 1.0},
                                                   gen_length=16, block_length=8, steps=4)])
    assert r.step_counts == [4, 4, 4, 4]


@pytest.fixture
def eos_engine(tiny_model_dir):
    """The tiny model with its EOS head row copied from its favourite token, so EOS is
    proposed often (as a trained model does for padding)."""
    from unmaskd.engine.loop import Engine

    engine = Engine.from_dir(tiny_model_dir, default_gen_length=16)
    (r,) = engine.generate([GenerationRequest(prompts(engine, 1)[0], gen_length=16)])
    favourite = max(set(r.token_ids), key=r.token_ids.count)
    head = engine.model.transformer.ff_out.weight
    head[engine.eos_id] = head[favourite] * 1.05
    return engine


def test_stop_at_eos_matches_the_trace_derived_nfe(eos_engine):
    tiny_engine = eos_engine
    eos = tiny_engine.eos_id
    checked = 0
    for ids in prompts(tiny_engine, 3):
        for name in ["topk_confidence", "threshold", "random"]:
            kwargs = dict(gen_length=16, block_length=16, steps=16)
            (full,) = tiny_engine.generate([GenerationRequest(ids, name, **kwargs)])
            (short,) = tiny_engine.generate([GenerationRequest(ids, name, stop_at_eos=True,
                                                               **kwargs)])
            assert short.text == full.text
            assert short.nfe == nfe_if_stopped_at_eos(full.token_ids, full.trace, full.nfe, eos)
            if eos in short.token_ids:
                # masks left at the stop become EOS; committed tokens never change
                first = short.token_ids.index(eos)
                assert short.token_ids[:first] == full.token_ids[:first]
                assert all(t == eos or short.trace[i] < short.nfe - 1 or t == full.token_ids[i]
                           for i, t in enumerate(short.token_ids))
                assert tiny_engine.mask_id not in short.token_ids
                checked += short.nfe < full.nfe
    assert checked  # the tiny model proposes EOS often enough for stopping to save steps


def test_cancel_retires_a_request(tiny_engine):
    ids = prompts(tiny_engine, 1)[0]
    rid = tiny_engine.add(GenerationRequest(ids, "topk_confidence", gen_length=16))
    tiny_engine.step()
    tiny_engine.cancel(rid)
    report = tiny_engine.step()
    assert [r.finish_reason for r in report.finished] == ["cancelled"]
    assert not tiny_engine.active


@pytest.mark.parametrize("kwargs,field", [
    (dict(prompt_ids=[]), "prompt"),
    (dict(sampler="nope"), "sampler"),
    (dict(sampler="threshold", sampler_params={"threshold": 2}), "sampler_params.threshold"),
    (dict(gen_length=16, block_length=5), "block_length"),
    (dict(gen_length=16, block_length=4, steps=6), "steps"),
    (dict(gen_length=16, steps=32), "steps"),
    (dict(gen_length=10_000), "gen_length"),
    (dict(prompt_ids=[5] * 10_000), "prompt"),
    (dict(temperature=-1.0), "temperature"),
    (dict(gen_length=16, block_length=4, steps=8, steps_per_block=2), "steps_per_block"),
    (dict(gen_length=16, block_length=4, steps_per_block=0), "steps_per_block"),
    (dict(gen_length=16, block_length=4, steps_per_block=5), "steps_per_block"),
    (dict(steps_per_block="2"), "steps_per_block"),
])
def test_invalid_requests_name_the_field(tiny_engine, kwargs, field):
    req = GenerationRequest(**{"prompt_ids": [5, 6, 7], **kwargs})
    with pytest.raises(InvalidRequest) as info:
        tiny_engine.generate([req])
    assert info.value.field == field
    assert not tiny_engine.active


def test_requests_joining_mid_flight_decode_as_if_alone(tiny_engine):
    """Continuous batching: a request added between steps must not disturb running rows."""
    reqs = [GenerationRequest(ids, name, gen_length=16, block_length=8, seed=i)
            for i, (ids, name) in enumerate(zip(prompts(tiny_engine, 3) * 2,
                                                ["topk_confidence", "threshold", "random",
                                                 "eb", "factor", "klass"]))]
    alone = [tiny_engine.generate([r])[0].token_ids for r in reqs]
    ids, results = {}, {}
    for i, req in enumerate(reqs):  # one joins every step
        ids[tiny_engine.add(req)] = i
        for res in tiny_engine.step().finished:
            results[ids[res.request_id]] = res.token_ids
    while tiny_engine.active:
        for res in tiny_engine.step().finished:
            results[ids[res.request_id]] = res.token_ids
    assert [results[i] for i in range(len(reqs))] == alone


def test_stateful_sampler_survives_canvas_width_changes(tiny_engine):
    """klass keeps per-position state across steps: a wider request joining and then leaving
    the batch changes the canvas width under it, which must change none of its decisions."""
    klass = GenerationRequest(prompts(tiny_engine, 1)[0], "klass", gen_length=16, block_length=8)
    wide = GenerationRequest(prompts(tiny_engine, 2)[1], "topk_confidence", gen_length=32,
                             block_length=8, steps=8)
    alone = tiny_engine.generate([klass])[0].token_ids
    ids, results = {tiny_engine.add(klass): "klass"}, {}
    for step in range(40):
        if step == 1:
            ids[tiny_engine.add(wide)] = "wide"
        for res in tiny_engine.step().finished:
            results[ids[res.request_id]] = res.token_ids
        if not tiny_engine.active:
            break
    assert set(results) == {"klass", "wide"}
    assert results["klass"] == alone


def test_steps_per_block_is_the_same_budget_as_steps_over_the_blocks(tiny_engine):
    ids = prompts(tiny_engine, 1)[0]
    for sampler in ("topk_confidence", "margin", "threshold"):
        per_block, total = tiny_engine.generate([
            GenerationRequest(ids, sampler, gen_length=16, block_length=4, steps_per_block=2),
            GenerationRequest(ids, sampler, gen_length=16, block_length=4, steps=8)])
        assert (per_block.token_ids, per_block.nfe) == (total.token_ids, total.nfe)
        assert per_block.nfe <= 8


@pytest.mark.parametrize("gen_length,block_length", [(16, 4), (13, 1), (50, 10), (30, 6)])
def test_default_block_length_divides_any_canvas(tiny_engine, gen_length, block_length):
    vr = tiny_engine.validate(GenerationRequest([5, 6, 7], gen_length=gen_length))
    assert vr.block_length == block_length
    assert tiny_engine.default_canvas(gen_length) == (gen_length, block_length)


def test_the_default_block_length_is_the_models_where_it_has_one():
    """One function answers for every caller: a model that decodes the canvas as one block
    (Dream) gets the canvas; a trained block length wins where it divides the canvas."""
    from unmaskd.engine.sequence import default_block_length

    assert default_block_length(48, full_block=True) == 48
    assert default_block_length(256, trained_block=32) == 32
    assert default_block_length(100, trained_block=32) == 25  # 32 does not divide 100: L/4
    assert default_block_length(48, trained_block=None) == 12
