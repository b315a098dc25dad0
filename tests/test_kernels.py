"""Tests for kernels/: the Triton kernel (under Triton's interpreter) and the torch reference,
both against a float64 oracle written here, plus Gumbel sampling and dispatcher behaviour.

Tolerances (absolute): prob / top1 / top2 1e-5, entropy 1e-4. For fp16 / bf16 inputs the
oracle runs on the same low-precision values upcast to float64, so the kernel's only error
is its fp32 arithmetic and the same bounds hold for every input dtype. Tokens must match
exactly (greedy: torch.argmax of the oracle; sampled: the two paths against each other).
"""
import importlib
import math
import os
import sys

import pytest
import torch
from scipy.stats import chisquare
from unmaskd import kernels  # imports no triton: kernels.triton_confidence is loaded lazily
from unmaskd.kernels.reference import confidence_stats_torch, gumbel_noise

# Must precede the first import of kernels.triton_confidence (@triton.jit picks interpreted or
# compiled when it runs); reload in case another test module already imported it.
os.environ["TRITON_INTERPRET"] = "1"
try:
    _tc = importlib.import_module("unmaskd.kernels.triton_confidence")
    if "InterpretedFunction" not in type(_tc._confidence_kernel).__name__:
        _tc = importlib.reload(_tc)
    confidence_stats_triton = _tc.confidence_stats_triton
except ImportError:  # triton missing: only the Triton tests are skipped
    confidence_stats_triton = None

needs_triton = pytest.mark.skipif(confidence_stats_triton is None, reason="triton not importable")
PROB_TOL, ENT_TOL = 1e-5, 1e-4
NEG_INF = float("-inf")


def oracle(logits: torch.Tensor, exclude: int | None) -> dict[str, torch.Tensor]:
    """float64 ground truth, written independently of kernels/reference.py."""
    x = logits.double().clone()
    if exclude is not None:
        x[:, exclude] = NEG_INF
    logp = torch.log_softmax(x, dim=1)
    p = logp.exp()
    top = torch.cat([p, torch.zeros_like(p[:, :1])], dim=1).topk(2, dim=1).values
    entropy = -(p * logp).nansum(dim=1)  # 0 * -inf = nan is dropped: 0 log 0 = 0
    return {"p": p, "token": x.argmax(dim=1), "top1": top[:, 0], "top2": top[:, 1],
            "entropy": entropy}


def make_logits(n: int, v: int, dtype: torch.dtype, gen: torch.Generator) -> tuple[torch.Tensor,
                                                                                    int]:
    """Random logits with -inf entries, exact ties at the max and a (tempting) excluded token."""
    x = (torch.randn(n, v, generator=gen) * 3).to(dtype)
    x[torch.rand(n, v, generator=gen) < 0.1] = NEG_INF
    exclude = int(torch.randint(v, (1,), generator=gen))
    keep = (exclude + 1) % v
    x[:, keep] = 0.0  # at least one finite, non-excluded entry per row
    for r in range(n):
        if r % 3 == 0 and v > 1:  # duplicate the max at two random columns
            a, b = torch.randint(v, (2,), generator=gen).tolist()
            x[r, a] = x[r, b] = x[r].max() + 1
        if r % 4 == 1:  # the excluded token would win if it were not excluded
            x[r, exclude] = x[r].max() + 5
        if r % 5 == 2:  # a single finite entry: top1 = 1, top2 = 0, entropy = 0
            x[r] = NEG_INF
            x[r, keep] = 1.5
    return x, (exclude if v > 1 else None)


def poisoned(n: int) -> kernels.ConfidenceStats:
    f = torch.full((n,), float("nan"))
    return kernels.ConfidenceStats(torch.full((n,), -1, dtype=torch.int64), f, f.clone(),
                                   f.clone(), f.clone())


def check_against_oracle(stats, logits, exclude, sampled=None):
    ref = oracle(logits, exclude)
    assert (stats.token >= 0).all() and not any(t.isnan().any() for t in stats[1:5])
    if sampled is None:
        assert torch.equal(stats.token, ref["token"])
    else:  # greedy rows must still be argmax
        assert torch.equal(stats.token[~sampled], ref["token"][~sampled])
    prob = ref["p"].gather(1, stats.token[:, None]).squeeze(1)
    for got, want, tol in ((stats.prob, prob, PROB_TOL), (stats.top1, ref["top1"], PROB_TOL),
                           (stats.top2, ref["top2"], PROB_TOL),
                           (stats.entropy, ref["entropy"], ENT_TOL)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, atol=tol, rtol=0)


def random_sampling_args(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    temps = torch.tensor([0.0, 0.5, 1.0, 1.7])[torch.randint(4, (n,), generator=gen)]
    seeds = torch.randint(-2**63, 2**63 - 1, (n,), generator=gen, dtype=torch.int64)
    return temps, seeds


SHAPES = [(n, v) for n in (1, 7, 33) for v in (5, 1000, 1531)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,v", SHAPES)
def test_triton_matches_oracle(n, v, dtype):
    gen = torch.Generator().manual_seed(n * 10007 + v)
    logits, exclude = make_logits(n, v, dtype, gen)
    stats = confidence_stats_triton(logits, None, None, exclude, out=poisoned(n))
    check_against_oracle(stats, logits, exclude)


@needs_triton
@pytest.mark.parametrize("n,v,dtype", [(7, 1531, torch.float32), (9, 1000, torch.bfloat16)])
def test_triton_small_blocks_and_sampling(n, v, dtype):
    """Many BLOCK_V = 128 chunks (online rescaling, per-lane state), mixed greedy / sampled rows."""
    gen = torch.Generator().manual_seed(v)
    logits, exclude = make_logits(n, v, dtype, gen)
    lane = (exclude + 1) % 128  # columns lane + 128 k share a lane and are never excluded
    logits[0] = torch.linspace(-20, 20, v)  # max keeps growing: rescaled on every chunk
    logits[1, lane + 128 * torch.arange(1, 4)] = 20.0  # tie within a lane: lowest index wins
    logits[2] = 0.0
    logits[2, [lane, lane + 128, lane + 512]] = torch.tensor([8.0, 10.0, 9.0], dtype=dtype)
    logits[3] = NEG_INF  # a sampled tie: g vanishes next to 1e30, so the keys are equal
    logits[3, [lane + 64, lane + 128, lane + 192]] = 1e30
    temps, seeds = random_sampling_args(n, gen)
    temps[3] = 1.0
    for t in (None, temps):
        # Ties and max growth within and across unrolled chunks; whole groups and the partial
        # last one; one row per program (loads with no predicate) and several.
        for config in [(2, 128, 4, 1), (2, 128, 4, 2), (2, 128, 4, 4), (1, 128, 4, 4)]:
            stats = confidence_stats_triton(logits, t, seeds, exclude, out=poisoned(n),
                                            config=config)
            check_against_oracle(stats, logits, exclude, None if t is None else t > 0)
    ref = confidence_stats_torch(logits, temps, seeds, exclude)
    assert torch.equal(stats.token, ref.token) and stats.token[3] == lane + 64


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,v", SHAPES)
def test_reference_matches_oracle(n, v, dtype, monkeypatch):
    gen = torch.Generator().manual_seed(n * 10007 + v)
    logits, exclude = make_logits(n, v, dtype, gen)
    monkeypatch.setattr("unmaskd.kernels.reference.CHUNK_BYTES", 3 * v * 8)  # several row chunks
    check_against_oracle(confidence_stats_torch(logits, None, None, exclude), logits, exclude)
    temps, seeds = random_sampling_args(n, gen)
    check_against_oracle(confidence_stats_torch(logits, temps, seeds, exclude), logits, exclude,
                         temps > 0)


def paths():
    yield confidence_stats_torch
    if confidence_stats_triton is not None:
        yield confidence_stats_triton


@pytest.mark.parametrize("impl", list(paths()))
def test_degenerate_rows(impl):
    """V == 1, and a row with no finite entry (token 0, NaN statistics by definition)."""
    one = impl(torch.tensor([[2.0], [NEG_INF]]), torch.tensor([1.0, 1.0]),
               torch.tensor([3, 4]), None)
    assert one.token.tolist() == [0, 0]
    assert [t[0].item() for t in one[1:5]] == [1.0, 1.0, 0.0, 0.0]
    assert all(t[1].isnan() for t in one[1:5])


def py_gumbel(seed: int, v: int) -> float:
    """The documented noise formula in plain Python integers (reference.py docstring)."""
    m32 = 0xFFFFFFFF

    def fmix32(h: int) -> int:
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & m32
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & m32
        return h ^ (h >> 16)

    seed &= 2**64 - 1
    key = fmix32((seed & m32) ^ fmix32((seed >> 32) ^ 0x9E3779B9))
    h = fmix32(key ^ ((v * 0x9E3779B9) & m32))
    return -math.log(-math.log(((h >> 9) + 0.5) / 2**23))


def test_gumbel_formula():
    seeds = [0, 1, -1, 12345, 2**62 + 7, -2**63, 2**63 - 1]
    cols = [*range(40), 126463, 152063]
    g = gumbel_noise(torch.tensor(seeds), max(cols) + 1)
    want = torch.tensor([[py_gumbel(s, v) for v in cols] for s in seeds], dtype=torch.float64)
    torch.testing.assert_close(g[:, cols], want, rtol=1e-12, atol=0)
    assert g.max() < 16.64 and g.min() > -2.82  # the bound the kernel's chunk skipping uses


@needs_triton
def test_triton_fmix32_is_rng_fmix32():
    """The kernel's _fmix32 is a deliberate copy of kernels/rng.py's fmix32: bit for bit."""
    import triton
    import triton.language as tl
    from unmaskd.kernels.rng import fmix32

    @triton.jit
    def apply(x_ptr, out_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(out_ptr + i, _tc._fmix32(tl.load(x_ptr + i)))

    x = torch.cat([torch.randint(0, 2**32, (1020,), generator=torch.Generator().manual_seed(4)),
                   torch.tensor([0, 1, 0x9E3779B9, 2**32 - 1])])
    out = torch.empty(1024, dtype=torch.uint32)
    apply[(1,)](x.to(torch.uint32), out, N=1024)
    assert torch.equal(out.to(torch.int64) & 0xFFFFFFFF, fmix32(x))


@pytest.mark.parametrize("impl", list(paths()))
def test_sampling_is_batch_invariant(impl):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 300, generator=gen)
    temps = torch.full((12,), 1.0)
    seeds = torch.randint(0, 2**40, (12,), generator=gen)
    batch = impl(logits, temps, seeds, None).token
    perm = torch.randperm(12, generator=gen)
    assert torch.equal(impl(logits[perm], temps[perm], seeds[perm], None).token, batch[perm])
    for i in (0, 5, 11):
        assert impl(logits[i:i + 1], temps[i:i + 1], seeds[i:i + 1], None).token == batch[i]
    other = impl(logits, temps, seeds + 1, None).token  # and the seed matters
    assert not torch.equal(other, batch)


@needs_triton
def test_paths_agree_on_sampled_tokens():
    # Both paths draw the same noise; keys differ only by fp32 vs fp64 rounding (~1e-6), so
    # a mismatch needs two keys within ~1e-6 of each other: not expected on a few hundred rows.
    gen = torch.Generator().manual_seed(2)
    logits, exclude = make_logits(300, 1000, torch.float32, gen)
    temps, seeds = random_sampling_args(300, gen)
    temps = temps.clamp(min=0.3)
    ref = confidence_stats_torch(logits, temps, seeds, exclude)
    tri = confidence_stats_triton(logits, temps, seeds, exclude)
    assert torch.equal(ref.token, tri.token)
    torch.testing.assert_close(tri.prob, ref.prob, atol=PROB_TOL, rtol=0)


@pytest.mark.parametrize("impl,draws", [(confidence_stats_torch, 20000),
                                        (confidence_stats_triton, 2000)])
def test_sampling_distribution(impl, draws):
    """Tokens of one row over many seeds follow softmax(logits / T) (chi-square, p > 0.001)."""
    if impl is None:
        pytest.skip("triton not importable")
    row = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 2.0, NEG_INF])
    t = 0.8
    seeds = torch.randint(-2**63, 2**63 - 1, (draws,), generator=torch.Generator().manual_seed(3))
    tokens = impl(row.expand(draws, -1), torch.full((draws,), t), seeds, None).token
    expected = torch.softmax(row.double() / t, dim=0) * draws
    counts = torch.bincount(tokens, minlength=row.numel()).double()
    assert counts[-1] == 0
    assert chisquare(counts[:-1].numpy(), expected[:-1].numpy()).pvalue > 0.001


def test_dispatcher(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "confidence_stats_torch",
                        lambda *a, **k: calls.append("torch") or confidence_stats_torch(*a, **k))
    logits = torch.randn(3, 10)
    monkeypatch.delenv("UNMASKD_KERNEL", raising=False)
    kernels.confidence_stats(logits)  # CPU tensors default to torch
    monkeypatch.setenv("UNMASKD_KERNEL", "torch")
    kernels.confidence_stats(logits)
    assert calls == ["torch", "torch"]
    monkeypatch.setenv("UNMASKD_KERNEL", "cuda")
    with pytest.raises(ValueError):
        kernels.confidence_stats(logits)
    monkeypatch.setenv("UNMASKD_KERNEL", "triton")
    monkeypatch.setitem(sys.modules, "unmaskd.kernels.triton_confidence", None)
    with pytest.raises(RuntimeError, match="not importable"):
        kernels.confidence_stats(logits)


@needs_triton
def test_dispatcher_forces_triton(monkeypatch):
    import unmaskd.kernels.triton_confidence as tc

    calls = []
    monkeypatch.setattr(tc, "confidence_stats_triton",
                        lambda *a: calls.append("triton") or confidence_stats_triton(*a))
    monkeypatch.setenv("UNMASKD_KERNEL", "triton")
    logits = torch.randn(4, 50)
    seeds = torch.arange(4)
    stats = kernels.confidence_stats(logits, 0.7, seeds, exclude_token_id=3)
    assert calls == ["triton"]
    monkeypatch.setenv("UNMASKD_KERNEL", "torch")
    assert torch.equal(stats.token, kernels.confidence_stats(logits, 0.7, seeds, 3).token)
    monkeypatch.setenv("UNMASKD_KERNEL", "triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.confidence_stats(logits)


def test_dispatcher_arguments():
    logits = torch.randn(3, 10)
    with pytest.raises(ValueError, match="seeds"):
        kernels.confidence_stats(logits, temperature=0.5)
    with pytest.raises(ValueError, match="seeds"):
        kernels.confidence_stats(logits, temperature=torch.tensor([0.0, 0.5, 0.0]))
    # All-greedy tensor temperatures need no seeds.
    greedy = kernels.confidence_stats(logits, temperature=torch.zeros(3))
    assert torch.equal(greedy.token, logits.argmax(1))
    with pytest.raises(ValueError):
        kernels.confidence_stats(logits, exclude_token_id=10)
    empty = kernels.confidence_stats(torch.randn(0, 10), 1.0, torch.zeros(0, dtype=torch.int64))
    assert empty.token.shape == (0,) and empty.token.dtype == torch.int64
    assert empty.entropy.dtype == torch.float32


# ---- the policy's input embedding (policy_input=(weight, bias, features)) -------------------
# Two tolerances. Against F.linear over the SAME path's fp32 statistics, the epilogue is the
# same fp32 dot product up to summation order: rtol = atol = 1e-6. Between the Triton and the
# torch paths the statistics themselves differ by up to PROB_TOL / ENT_TOL (margin: 2 PROB_TOL),
# so |d embedding| <= sum_f max|W[:, f]| * tol_f, plus 1e-6 of rounding.
from unmaskd.sampler_plugins.learned import policy_features  # noqa: E402
from unmaskd.sampler_plugins.policy_net import PolicyNet  # noqa: E402

EMB_TOL = 1e-6
FEATURE_TOL = {"confidence": PROB_TOL, "margin": 2 * PROB_TOL, "entropy": ENT_TOL}
FEATURE_SETS = [("confidence",), ("margin",), ("entropy", "confidence"),
                ("confidence", "margin", "entropy"), ("entropy", "margin", "confidence")]


def policy_layer(features, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(width, len(features), generator=gen),
            torch.randn(width, generator=gen))


def linear_of_stats(stats, weight, bias, features) -> torch.Tensor:
    """F.linear over the features exactly as sampler_plugins.learned builds them."""
    table = {"confidence": stats.prob, "margin": stats.top1 - stats.top2,
             "entropy": stats.entropy}
    feats = torch.stack([table[f].float() for f in features], -1)
    return torch.nn.functional.linear(feats, weight, bias)


def poisoned_with_embedding(n: int, width: int) -> kernels.ConfidenceStats:
    return poisoned(n)._replace(embedding=torch.full((n, width), float("nan")))


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("features", FEATURE_SETS)
def test_triton_embedding_matches_reference(features, dtype):
    n, v, width = 19, 1000, 128
    gen = torch.Generator().manual_seed(len(features) * 31 + v)
    logits, exclude = make_logits(n, v, dtype, gen)
    temps, seeds = random_sampling_args(n, gen)
    weight, bias = policy_layer(features, width, seed=n)
    for t in (None, temps):  # sampled rows: the feature is the sampled token's probability
        tri = confidence_stats_triton(logits, t, seeds, exclude, policy_input=(weight, bias,
                                      features), out=poisoned_with_embedding(n, width))
        ref = confidence_stats_torch(logits, t, seeds, exclude, (weight, bias, features))
        assert tri.embedding.dtype == ref.embedding.dtype == torch.float32
        assert tri.embedding.shape == ref.embedding.shape == (n, width)
        assert not tri.embedding.isnan().any()
        torch.testing.assert_close(tri.embedding, linear_of_stats(tri, weight, bias, features),
                                   rtol=EMB_TOL, atol=EMB_TOL)
        assert torch.equal(ref.embedding, linear_of_stats(ref, weight, bias, features))
        assert torch.equal(tri.token, ref.token)
        atol = sum(weight[:, j].abs().max().item() * FEATURE_TOL[f]
                   for j, f in enumerate(features)) + EMB_TOL
        torch.testing.assert_close(tri.embedding, ref.embedding, rtol=0, atol=atol)


@needs_triton
@pytest.mark.parametrize("width,config",
                         [(200, (2, 128, 4, 4)), (5, None), (128, (16, 64, 4, 1))])
def test_triton_embedding_writes_every_element(width, config):
    """Poisoned outputs, widths that are not / are a power of two (BLOCK_W chunks), a partial
    last row block, and a strided out.embedding view whose extra columns stay untouched."""
    n, v = 33, 300
    features = ("confidence", "margin", "entropy")
    gen = torch.Generator().manual_seed(width)
    logits, exclude = make_logits(n, v, torch.bfloat16, gen)
    weight, bias = policy_layer(features, width, seed=width)
    buf = torch.full((n, width + 3), float("nan"))
    out = poisoned(n)._replace(embedding=buf[:, :width])
    stats = confidence_stats_triton(logits, None, None, exclude, out=out, config=config,
                                    policy_input=(weight, bias, features))
    assert stats.embedding.data_ptr() == buf.data_ptr()
    assert not buf[:, :width].isnan().any() and buf[:, width:].isnan().all()
    check_against_oracle(stats, logits, exclude)
    torch.testing.assert_close(stats.embedding, linear_of_stats(stats, weight, bias, features),
                               rtol=EMB_TOL, atol=EMB_TOL)
    # Allocated by the kernel wrapper when out has no embedding; bias None means zero bias.
    nobias = confidence_stats_triton(logits, None, None, exclude, out=poisoned(n),
                                     policy_input=(weight, None, features))
    torch.testing.assert_close(nobias.embedding, linear_of_stats(stats, weight, None, features),
                               rtol=EMB_TOL, atol=EMB_TOL)


@pytest.mark.parametrize("impl", list(paths()))
def test_embedding_of_degenerate_rows(impl):
    """A row with no finite entry has NaN statistics, hence a NaN embedding on both paths."""
    weight, bias = policy_layer(("confidence", "entropy"), 8, seed=0)
    stats = impl(torch.tensor([[2.0, 1.0], [NEG_INF, NEG_INF]]), None, None, None,
                 policy_input=(weight, bias, ("confidence", "entropy")))
    assert not stats.embedding[0].isnan().any() and stats.embedding[1].isnan().all()


def test_dispatcher_policy_input(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 50, generator=gen)
    features = ["margin", "confidence"]  # any sequence of names
    weight, bias = policy_layer(features, 16, seed=1)
    monkeypatch.setenv("UNMASKD_KERNEL", "torch")
    assert kernels.confidence_stats(logits).embedding is None
    stats = kernels.confidence_stats(logits, 0.5, torch.arange(6), 3,
                                     policy_input=(weight, bias, features))
    assert torch.equal(stats.embedding, linear_of_stats(stats, weight, bias, features))
    if confidence_stats_triton is not None:
        monkeypatch.setenv("UNMASKD_KERNEL", "triton")
        tri = kernels.confidence_stats(logits, 0.5, torch.arange(6), 3,
                                       policy_input=(weight.double(), bias.half(), features))
        torch.testing.assert_close(tri.embedding, stats.embedding, rtol=0, atol=1e-3)
    empty = kernels.confidence_stats(torch.randn(0, 50), policy_input=(weight, bias, features))
    assert empty.embedding.shape == (0, 16) and empty.embedding.dtype == torch.float32
    for bad in [(weight, bias, ("confidence",)), (weight, bias, ("margin", "logit")),
                (weight, bias[:3], features), (weight[0], bias, features), (weight, bias),
                (weight, bias, ())]:
        with pytest.raises(ValueError, match="policy_input"):
            kernels.confidence_stats(logits, policy_input=bad)


def randomised_policy(features, seed: int) -> PolicyNet:
    """A PolicyNet whose zero-initialised adaLN and head are filled too (else its output
    would not depend on the input at all)."""
    torch.manual_seed(seed)
    net = PolicyNet(features)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return net.eval()


@pytest.mark.parametrize("impl", list(paths()))
@pytest.mark.parametrize("features", [("confidence",), ("confidence", "margin", "entropy")])
def test_forward_embedded_matches_forward(impl, features):
    """The engine-shaped wiring: statistics of the valid canvas positions, scattered into
    [B, W] grids; the embedding grid's unfilled (invalid) positions hold the bias, which is
    what the input layer gives for the zero features there. Then forward_embedded(embedding)
    == forward(feats), exactly on the torch path, within 1e-5 on the Triton one."""
    B, W, V = 3, 24, 200
    net = randomised_policy(features, seed=len(features))
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(B, W, V, generator=gen) * 3
    valid = torch.arange(W)[None, :] < torch.tensor([W, 17, 9])[:, None]
    mask_bits = (torch.rand(B, W, generator=gen) < 0.5) & valid
    t = torch.tensor([0.1, 0.5, 0.9])
    rows, cols = valid.nonzero(as_tuple=True)
    layer = (net.input.weight, net.input.bias, net.features)
    stats = impl(logits[rows, cols], None, None, None, policy_input=layer)
    grid = {}
    for name in ("prob", "top1", "top2", "entropy"):
        grid[name] = torch.zeros(B, W)
        grid[name][rows, cols] = getattr(stats, name)
    view = type("View", (), grid)
    feats = policy_features(view, net.features)
    emb = net.input.bias.detach().expand(B, W, -1).clone()
    emb[rows, cols] = stats.embedding
    with torch.no_grad():
        want = net(feats, mask_bits, t, valid)
        assert torch.equal(net.forward_embedded(net.input(feats), mask_bits, t, valid), want)
        got = net.forward_embedded(emb, mask_bits, t, valid)
    assert want.std() > 0.1  # the output does depend on the features
    if impl is confidence_stats_torch:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@needs_triton
def test_engine_tokens_identical_on_triton_and_torch_paths(monkeypatch):
    """The embedded model decoded end to end with the interpreted Triton kernel and with the
    reference: a mixed batch (greedy top-k, sampled threshold, and a learned policy whose input
    layer the kernel applies) gives the same tokens and step counts."""
    from unmaskd.dllm import EMBEDDED_MODEL_DIR
    from unmaskd.engine.loop import Engine
    from unmaskd.engine.sequence import GenerationRequest
    from unmaskd.sampler_plugins.policy_store import STORE, Policy

    engine = Engine.from_dir(EMBEDDED_MODEL_DIR, default_gen_length=24)
    STORE.add(Policy("kernel-test", randomised_policy(("confidence", "entropy"), seed=3),
                     {"block_length": 24}))
    ids = engine.tokenizer("Question: Ava has 12 coins. Ava finds 5 more coins. "
                           "How many coins does Ava have now?\nAnswer:")["input_ids"]
    reqs = [GenerationRequest(ids, "topk_confidence", gen_length=24, block_length=6, steps=12),
            GenerationRequest(ids, "threshold", {"threshold": 0.7}, gen_length=24,
                              block_length=12, steps=24, temperature=0.8, seed=5),
            GenerationRequest(ids, "learned", {"policy": "kernel-test", "beta": 2.0},
                              gen_length=24, block_length=24, steps=24, seed=1)]
    results = {}
    try:
        for backend in ("torch", "triton"):
            monkeypatch.setenv("UNMASKD_KERNEL", backend)
            results[backend] = [(r.token_ids, r.step_counts) for r in engine.generate(reqs)]
    finally:
        STORE.remove("kernel-test")
    assert results["triton"] == results["torch"]
