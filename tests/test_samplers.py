"""Each unmasking rule driven with hand-made confidences (diffusers-style)."""

import pytest
import torch
from unmaskd.engine.sequence import InvalidRequest, parse_sampler_params
from unmaskd.sampler_plugins import StepView, get_sampler, registered_samplers


def view(prob, candidate=None, top2=None, entropy=None, step_in_block=0, steps_per_block=4,
         block=None, probs=None, states=None) -> StepView:
    prob = torch.tensor(prob, dtype=torch.float32)
    if prob.dim() == 1:
        prob = prob[None]
    n, W = prob.shape
    cand = torch.ones(n, W, dtype=torch.bool) if candidate is None else torch.tensor(candidate)
    if cand.dim() == 1:
        cand = cand[None]
    in_block = torch.ones(n, W, dtype=torch.bool) if block is None else torch.tensor(block)[None]
    def tensor(x, default):
        t = default if x is None else torch.tensor(x, dtype=torch.float32)
        return t[None] if t.dim() == 1 else t
    return StepView(
        token=torch.arange(W).expand(n, W), prob=prob, top1=prob,
        top2=tensor(top2, torch.zeros(n, W)), entropy=tensor(entropy, torch.zeros(n, W)),
        candidate=cand, masked=cand.clone(), in_block=in_block, valid=torch.ones(n, W, dtype=bool),
        step_in_block=torch.full((n,), step_in_block),
        steps_per_block=torch.full((n,), steps_per_block),
        block_length=in_block.sum(-1),
        nfe=torch.zeros(n, dtype=torch.long), gen_length=torch.full((n,), W),
        rng_keys=torch.arange(n, dtype=torch.long) + 7, probs=probs,
        states=states if states is not None else [{} for _ in range(n)])


def sampler(name, **params):
    cls, p = parse_sampler_params(name, params)
    return cls([p], torch.device("cpu"))


def picked(mask) -> list[int]:
    return mask[0].nonzero().flatten().tolist()


def test_topk_follows_llada_linear_schedule():
    s = sampler("topk_confidence")
    # block of 6, 4 steps: 6 // 4 = 1 each, remainder 2 to the first two steps -> 2, 2, 1, 1
    counts = [picked(s.select(view([0.1, 0.9, 0.3, 0.8, 0.2, 0.7], step_in_block=i))).__len__()
              for i in range(4)]
    assert counts == [2, 2, 1, 1]
    assert picked(s.select(view([0.1, 0.9, 0.3, 0.8, 0.2, 0.7]))) == [1, 3]
    # only candidates are ranked
    v = view([0.1, 0.9, 0.3, 0.8], candidate=[True, False, True, True], steps_per_block=2)
    assert picked(s.select(v)) == [2, 3]


def test_random_is_reproducible_and_respects_candidates():
    s = sampler("random")
    v = view([0.5] * 8, candidate=[True] * 6 + [False] * 2, steps_per_block=2,
             block=[True] * 6 + [False] * 2)
    a, b = s.select(v), s.select(v)
    assert torch.equal(a, b) and a.sum() == 3 and not a[0, 6:].any()


def test_threshold_keeps_best_and_everything_at_or_above():
    s = sampler("threshold", threshold=0.8)
    assert picked(s.select(view([0.5, 0.79, 0.8, 0.95]))) == [2, 3]
    assert picked(s.select(view([0.5, 0.6, 0.4]))) == [1]  # none above: the most confident


def test_factor_rule():
    s = sampler("factor", factor=1.0)
    # sorted c = .99 (n=1: 2*.01=.02), .9 (n=2: 3*.1=.3), .7 (n=3: 4*.3=1.2 >= 1) -> top 2
    assert picked(s.select(view([0.7, 0.99, 0.9, 0.1]))) == [1, 2]
    assert picked(s.select(view([0.2, 0.3]))) == [1]  # at least one
    # strict inequality: (n+1)(1-c_n) == f is not committed (c = .5 -> 2 * .5 = 1)
    assert picked(sampler("factor", factor=1.0).select(view([0.5, 0.4]))) == [0]


def test_margin_and_entropy_rank_and_dream_schedule():
    # Dream: timesteps = linspace(1, eps, steps + 1); n = int(masked * (1 - s / t)).
    # 5 masked, 2 steps, eps 1e-3: t = 1, s = 0.5005 -> n = int(2.4975) = 2
    m = sampler("margin", eps=1e-3)
    v = view([0.9, 0.6, 0.5, 0.8, 0.3], top2=[0.05, 0.5, 0.1, 0.1, 0.25], steps_per_block=2)
    assert picked(m.select(v)) == [0, 3]  # margins .85, .1, .4, .7, .05
    e = sampler("entropy")
    v = view([0.5] * 5, entropy=[1.0, 0.1, 0.3, 2.0, 0.9], steps_per_block=2)
    assert picked(e.select(v)) == [1, 2]
    # 4 masked: int(4 * 0.4995) = 1 (Dream rounds down)
    v = view([0.5] * 4, entropy=[1.0, 0.1, 0.3, 2.0], steps_per_block=2)
    assert picked(e.select(v)) == [1]
    # 4 masked, 8 steps: int(4 * 0.125) = 0 in Dream; we take the best by this rule's ranking
    v = view([0.9, 0.5, 0.5, 0.5], entropy=[1.0, 0.1, 0.3, 2.0], steps_per_block=8)
    assert picked(e.select(v)) == [1]
    # last step of the budget: everything left
    v = view([0.5] * 4, entropy=[1.0, 0.1, 0.3, 2.0], steps_per_block=2, step_in_block=1)
    assert picked(e.select(v)) == [0, 1, 2, 3]


def test_maskgit_plus_ranks_by_probability_on_dreams_float32_grid():
    # Dream's alg="maskgit_plus": the proposed token's probability, Dream's schedule
    s = sampler("maskgit_plus")
    v = view([0.2, 0.9, 0.4, 0.8, 0.3], top2=[0.1, 0.85, 0.1, 0.1, 0.1], steps_per_block=2)
    assert picked(s.select(v)) == [1, 3]  # n = int(5 * 0.4995) = 2, by p (margin: [0, 2])
    # Dream computes n in float32 on torch.linspace's grid: 55 masked at step 35 of 37 gives
    # 27 (in float64 it would be 26); a fresh sampler per step budget, as the engine builds one
    # per batch membership
    v = view(torch.linspace(0.9, 0.1, 55).tolist(), steps_per_block=37, step_in_block=35)
    assert picked(sampler("maskgit_plus").select(v)) == list(range(27))


def test_eb_sampler_prefix_rule():
    s = sampler("eb", gamma=0.5)
    # sorted entropies .1, .2, .3, 1.0: prefix cost = sum - max = 0, .1, .3, .6 -> three
    assert picked(s.select(view([0.5] * 4, entropy=[0.3, 1.0, 0.1, 0.2]))) == [0, 2, 3]
    assert picked(sampler("eb", gamma=0.0).select(view([0.5] * 3, entropy=[2.0, 1.0, 3.0]))) == [1]


def test_klass_needs_stability_over_history():
    s = sampler("klass", conf=0.9, kl=0.01, history=2)
    probs = torch.tensor([[[0.95, 0.05], [0.6, 0.4]]])
    states = [{}]
    prob = [0.95, 0.6]
    # step 1: no history -> fallback to the single most confident
    assert picked(s.select(view(prob, probs=probs, states=states))) == [0]
    v = view(prob, probs=probs, states=states, candidate=[False, True])
    assert picked(s.select(v)) == [1]
    # position 0 stable for 2 steps and confident -> committed; position 1 not confident
    states = [{}]
    for _ in range(3):  # the first observation has nothing to compare with
        s.select(view(prob, probs=probs, states=states))
    assert states[0]["streak"].tolist() == [2, 2]
    assert picked(s.select(view(prob, probs=probs, states=states))) == [0]
    moved = torch.tensor([[[0.5, 0.5], [0.6, 0.4]]])
    s.select(view(prob, probs=moved, states=states))
    assert states[0]["streak"].tolist() == [0, 4]


def test_every_builtin_is_registered_with_validated_params():
    names = set(registered_samplers())
    assert {"random", "topk_confidence", "threshold", "factor", "margin", "entropy", "eb",
            "klass"} <= names
    with pytest.raises(InvalidRequest, match="sampler_params.threshold"):
        parse_sampler_params("threshold", {"threshold": 1.5})
    with pytest.raises(InvalidRequest, match="sampler_params.bogus"):
        parse_sampler_params("threshold", {"bogus": 1})
    with pytest.raises(InvalidRequest, match="unknown sampler"):
        parse_sampler_params("nope", {})
    assert get_sampler("nope") is None


def test_broken_plugin_is_skipped(monkeypatch, caplog):
    import unmaskd.sampler_plugins.registry as registry

    class FakeEntryPoint:
        name, value = "broken", "missing_module:Thing"

        def load(self):
            raise ImportError("no module named missing_module")

    monkeypatch.setattr(registry, "_registry", None)
    monkeypatch.setattr(registry, "entry_points", lambda group: [FakeEntryPoint()])
    samplers = registry.registered_samplers()
    assert "broken" not in samplers and "threshold" in samplers
    assert "skipping sampler plugin 'broken'" in caplog.text
    monkeypatch.setattr(registry, "_registry", None)


@pytest.mark.parametrize("name, params, field", [
    ("threshold", {"threshold": "0.9"}, "sampler_params.threshold"),
    ("factor", {"factor": True}, "sampler_params.factor"),
    ("klass", {"history": "2"}, "sampler_params.history"),
])
def test_sampler_params_take_json_types_as_they_are(name, params, field):
    with pytest.raises(InvalidRequest) as info:
        parse_sampler_params(name, params)
    assert info.value.field == field
