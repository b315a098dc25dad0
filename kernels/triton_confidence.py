"""Fused Triton kernel for the per-step confidence statistics (see reference.py for the spec).

Each program owns BLOCK_N rows and reads every logit exactly once, walking V in groups of
UNROLL chunks of BLOCK_V columns, all of a group loaded before any is used so that each thread
has UNROLL loads in flight. Per lane (one column slot of the [BLOCK_N, BLOCK_V] tile) it keeps,
in fp32:
  - an online softmax against the row max m: z = sum exp(x - m), s = sum exp(x - m) * (x - m),
    rescaled once per group when m grows, so that entropy = log z - s / z;
  - a running top-1 (value, chunk number) and top-2 value;
  - at T > 0 a running Gumbel-max over x / T + g (key, index, raw logit of the winner).
The row max of a group is the loop's only cross-lane reduction (two more per group when
sampling), and whole groups load with no column bound: the H200 runs showed the kernel bound
by instructions per logit, not by bytes. Lanes are merged once at the end, ties going to the
lowest index as in torch.argmax.

Optional epilogue (EMBED): the learned policy's input layer on the row's own statistics,
embedding = bias + sum_f feat_f * weight[:, f] in fp32, written as [N, width] rows; it reads
only the tiny weight (F <= 3 columns) and no logits.

Under the interpreter (CPU tensors) TRITON_INTERPRET=1 must be set before this module is
imported: triton.jit picks interpreted vs compiled at decoration time.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .reference import (
    POLICY_FEATURES,
    ConfidenceStats,
    PolicyInput,
    check_policy_input,
    empty_stats,
)

BIG_INDEX = tl.constexpr(2**31 - 1)  # "no index yet"; larger than any column, so it loses every min
G_MAX = tl.constexpr(17.0)  # strict upper bound on the fp32 Gumbel noise (it is <= 16.64)


@triton.jit
def _fmix32(h):
    # A deliberate copy of unmaskd.kernels.rng.fmix32 (murmur3's finaliser, middle shift 13) on
    # uint32, where multiplies wrap mod 2^32: the kernel's own, as a Triton function. Change
    # both or neither; tests/test_kernels.py checks that they agree bit for bit.
    h ^= h >> 16
    h *= 0x85EBCA6B
    h ^= h >> 13
    h *= 0xC2B2AE35
    h ^= h >> 16
    return h


@triton.jit
def _gumbel(key, cols, PRECISE_LOG: tl.constexpr):
    """g = -log(-log(u)), u from fmix32(key ^ (v * 0x9E3779B9)); key: uint32 [BLOCK_N, 1]."""
    h = _fmix32(key ^ (cols.to(tl.uint32) * 0x9E3779B9))
    u = ((h >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)  # exact: 24 significant bits
    # -log(u) for u near 1 (large g: the entries that win) needs a log with small RELATIVE
    # error near 1; tl.log may lower to lg2.approx whose absolute error would swamp it.
    if PRECISE_LOG:
        e = -libdevice.log(u)
    else:
        e = -tl.log(u)  # interpreter: numpy's log, already precise
    return -tl.log(e)


@triton.jit
def _feature(CODE: tl.constexpr, prob, top1, top2, entropy):
    """One policy feature (codes: index in POLICY_FEATURES): confidence, margin, entropy."""
    if CODE == 0:
        return prob
    elif CODE == 1:
        return top1 - top2
    else:
        return entropy


@triton.jit
def _embed(w_ptr, b_ptr, emb_ptr, stride_e, rows, row_ok, WIDTH, f0, f1, f2,
           NUM_FEATS: tl.constexpr, BLOCK_W: tl.constexpr):
    """emb[rows, :] = sum_f f_j * w[:, j] + b, weight [WIDTH, NUM_FEATS] contiguous (fp32)."""
    e_rows = emb_ptr + rows.to(tl.int64)[:, None] * stride_e
    for w0 in range(0, WIDTH, BLOCK_W):
        wc = w0 + tl.arange(0, BLOCK_W)
        w_ok = wc < WIDTH
        w_col = w_ptr + wc * NUM_FEATS
        # Same order as a GEMM then bias add: ((f0 w0 + f1 w1) + f2 w2) + b.
        acc = f0[:, None] * tl.load(w_col, mask=w_ok, other=0.0)[None, :]
        if NUM_FEATS > 1:
            acc += f1[:, None] * tl.load(w_col + 1, mask=w_ok, other=0.0)[None, :]
        if NUM_FEATS > 2:
            acc += f2[:, None] * tl.load(w_col + 2, mask=w_ok, other=0.0)[None, :]
        acc += tl.load(b_ptr + wc, mask=w_ok, other=0.0)[None, :]
        tl.store(e_rows + wc[None, :], acc, mask=row_ok[:, None] & w_ok[None, :])


@triton.jit
def _load(x_rows, cols, row_ok, V, MASKED: tl.constexpr, BLOCK_N: tl.constexpr):
    if MASKED:  # the last, partial group of chunks
        x = tl.load(x_rows + cols, mask=row_ok[:, None] & (cols < V), other=float("-inf"))
    elif BLOCK_N == 1:  # the program's one row exists: no predicate at all
        x = tl.load(x_rows + cols)
    else:
        x = tl.load(x_rows + cols, mask=row_ok[:, None], other=float("-inf"))
    return x.to(tl.float32)


@triton.jit
def _exp_sums(x, m, z, s):
    """z += exp(x - m), s += exp(x - m) * (x - m); m is the row max, so no term overflows."""
    d = x - m[:, None]
    e = tl.exp(d)
    return z + e, s + e * tl.maximum(d, -3.0e38)  # a -inf logit: e = 0 and 0 * -3e38 = 0


@triton.jit
def _top2(x, k, t1, t2, i1):
    """Per-lane top-1 (value, chunk number k) and top-2. Strict > keeps the earliest chunk;
    an equal later logit lands in t2."""
    gt = x > t1
    return tl.where(gt, x, t1), tl.where(gt, t1, tl.maximum(t2, x)), tl.where(gt, k, i1)


@triton.jit
def _fold_keys(x, cols, key, inv_t, need, bk, bi, bx, PRECISE_LOG: tl.constexpr):
    """Per-lane Gumbel-max over keys x / T + g (rows that need it; the rest get -inf)."""
    k = tl.where(need[:, None], x * inv_t[:, None] + _gumbel(key, cols, PRECISE_LOG),
                 float("-inf"))
    gt = k > bk
    return tl.where(gt, k, bk), tl.where(gt, cols, bi), tl.where(gt, x, bx)


@triton.jit
def _group(x_rows, start, lane, row_ok, V, exclude, m, z, s, t1, t2, i1,
           key, inv_t, sample, best, bk, bi, bx,
           MASKED: tl.constexpr, SAMPLE: tl.constexpr, PRECISE_LOG: tl.constexpr,
           BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, UNROLL: tl.constexpr):
    """UNROLL chunks of BLOCK_V columns from `start`, all loaded before any is used."""
    NEG_INF: tl.constexpr = float("-inf")
    c0 = start + lane[None, :]
    x0 = _load(x_rows, c0, row_ok, V, MASKED, BLOCK_N)
    x1 = x0
    x2 = x0
    x3 = x0
    if UNROLL > 1:
        x1 = _load(x_rows, c0 + BLOCK_V, row_ok, V, MASKED, BLOCK_N)
    if UNROLL > 2:
        x2 = _load(x_rows, c0 + 2 * BLOCK_V, row_ok, V, MASKED, BLOCK_N)
        x3 = _load(x_rows, c0 + 3 * BLOCK_V, row_ok, V, MASKED, BLOCK_N)
    if (exclude >= start) & (exclude < start + UNROLL * BLOCK_V):  # one group in V / span
        x0 = tl.where(c0 == exclude, NEG_INF, x0)
        x1 = tl.where(c0 + BLOCK_V == exclude, NEG_INF, x1)
        x2 = tl.where(c0 + 2 * BLOCK_V == exclude, NEG_INF, x2)
        x3 = tl.where(c0 + 3 * BLOCK_V == exclude, NEG_INF, x3)
    gmax = x0
    if UNROLL > 1:
        gmax = tl.maximum(gmax, x1)
    if UNROLL > 2:
        gmax = tl.maximum(gmax, tl.maximum(x2, x3))
    group_max = tl.max(gmax, axis=1)  # the loop's one cross-lane reduction

    # Online softmax against the row max: rescale the lanes' sums once per group.
    m_new = tl.maximum(m, group_max)
    m_safe = tl.where(m_new == NEG_INF, 0.0, m_new)  # all -inf so far: keep it finite
    alpha = tl.exp(m - m_safe)[:, None]  # 0 while m is -inf
    shift = tl.where(m == NEG_INF, 0.0, m - m_safe)[:, None]  # (x - m_new) - (x - m)
    s = alpha * (s + shift * z)
    z = alpha * z
    k0 = start // BLOCK_V
    z, s = _exp_sums(x0, m_safe, z, s)
    t1, t2, i1 = _top2(x0, k0, t1, t2, i1)
    if UNROLL > 1:
        z, s = _exp_sums(x1, m_safe, z, s)
        t1, t2, i1 = _top2(x1, k0 + 1, t1, t2, i1)
    if UNROLL > 2:
        z, s = _exp_sums(x2, m_safe, z, s)
        t1, t2, i1 = _top2(x2, k0 + 2, t1, t2, i1)
        z, s = _exp_sums(x3, m_safe, z, s)
        t1, t2, i1 = _top2(x3, k0 + 3, t1, t2, i1)

    if SAMPLE:
        # g < G_MAX, so a group whose max cannot beat the best key so far is skipped (a key
        # equal to it would lose the tie to the earlier index anyway).
        need = sample & (group_max * inv_t + G_MAX > best)
        if tl.max(need.to(tl.int32), axis=0) > 0:
            bk, bi, bx = _fold_keys(x0, c0, key, inv_t, need, bk, bi, bx, PRECISE_LOG)
            if UNROLL > 1:
                bk, bi, bx = _fold_keys(x1, c0 + BLOCK_V, key, inv_t, need, bk, bi, bx,
                                        PRECISE_LOG)
            if UNROLL > 2:
                bk, bi, bx = _fold_keys(x2, c0 + 2 * BLOCK_V, key, inv_t, need, bk, bi, bx,
                                        PRECISE_LOG)
                bk, bi, bx = _fold_keys(x3, c0 + 3 * BLOCK_V, key, inv_t, need, bk, bi, bx,
                                        PRECISE_LOG)
            best = tl.max(bk, axis=1)
    return m_new, z, s, t1, t2, i1, best, bk, bi, bx


@triton.jit
def _confidence_kernel(x_ptr, stride_n, temp_ptr, seed_ptr,
                       tok_ptr, prob_ptr, top1_ptr, top2_ptr, ent_ptr,
                       w_ptr, b_ptr, emb_ptr, stride_e, WIDTH,
                       N, V, exclude,
                       SAMPLE: tl.constexpr, PRECISE_LOG: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, UNROLL: tl.constexpr,
                       EMBED: tl.constexpr, NUM_FEATS: tl.constexpr, FEAT0: tl.constexpr,
                       FEAT1: tl.constexpr, FEAT2: tl.constexpr, BLOCK_W: tl.constexpr):
    NEG_INF: tl.constexpr = float("-inf")
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_n
    lane = tl.arange(0, BLOCK_V)

    m = tl.full([BLOCK_N], NEG_INF, tl.float32)            # row max so far
    z = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)           # per-lane sum exp(x - m)
    s = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)           # per-lane sum exp(x - m) * (x - m)
    t1 = tl.full([BLOCK_N, BLOCK_V], NEG_INF, tl.float32)  # per-lane top-1 / top-2 logits
    t2 = tl.full([BLOCK_N, BLOCK_V], NEG_INF, tl.float32)
    i1 = tl.full([BLOCK_N, BLOCK_V], BIG_INDEX, tl.int32)  # chunk number of the lane's top-1
    # Gumbel-max state (dead code unless SAMPLE).
    bk = tl.full([BLOCK_N, BLOCK_V], NEG_INF, tl.float32)  # best key x / T + g
    bi = tl.full([BLOCK_N, BLOCK_V], BIG_INDEX, tl.int32)
    bx = tl.full([BLOCK_N, BLOCK_V], NEG_INF, tl.float32)  # raw logit of the best key
    best = tl.full([BLOCK_N], NEG_INF, tl.float32)         # row-wide best key so far
    sample = rows < 0
    inv_t = tl.full([BLOCK_N], 1.0, tl.float32)
    key = tl.zeros([BLOCK_N, 1], tl.uint32)
    if SAMPLE:
        t = tl.load(temp_ptr + rows, mask=row_ok, other=0.0)
        sample = t > 0
        inv_t = tl.where(sample, 1.0 / tl.where(sample, t, 1.0), 1.0)
        seed = tl.load(seed_ptr + rows, mask=row_ok, other=0)
        lo = seed.to(tl.uint32)  # truncation keeps the low 32 bits
        hi = (seed >> 32).to(tl.uint32)
        key = _fmix32(lo ^ _fmix32(hi ^ 0x9E3779B9))[:, None]  # rng.row_key

    span = UNROLL * BLOCK_V
    full = V // span * span
    for start in range(0, full, span):  # whole groups: loads without a column bound
        m, z, s, t1, t2, i1, best, bk, bi, bx = _group(
            x_rows, start, lane, row_ok, V, exclude, m, z, s, t1, t2, i1, key, inv_t, sample,
            best, bk, bi, bx, False, SAMPLE, PRECISE_LOG, BLOCK_N, BLOCK_V, UNROLL)
    if full < V:  # the partial last group
        m, z, s, t1, t2, i1, best, bk, bi, bx = _group(
            x_rows, full, lane, row_ok, V, exclude, m, z, s, t1, t2, i1, key, inv_t, sample,
            best, bk, bi, bx, True, SAMPLE, PRECISE_LOG, BLOCK_N, BLOCK_V, UNROLL)

    # Merge lanes: lowest column among the lanes holding the max.
    top1 = m
    m_safe = tl.where(m == NEG_INF, 0.0, m)
    at_max = (t1 == top1[:, None]) & (i1 != BIG_INDEX)
    idx1 = tl.min(tl.where(at_max, i1 * BLOCK_V + lane[None, :], BIG_INDEX), axis=1)
    # Second largest: the winner lane's t2, every other lane's t1 (a tie gives top2 == top1).
    winner = lane[None, :] == (idx1 % BLOCK_V)[:, None]
    top2 = tl.max(tl.where(winner, t2, t1), axis=1)
    zs = tl.sum(z, axis=1)
    zs = tl.where(zs > 0, zs, 1.0)  # empty / out-of-range rows: stored as NaN or masked below
    inv_z = 1.0 / zs
    entropy = tl.log(zs) - tl.sum(s, axis=1) * inv_z
    token = idx1
    x_tok = m
    if SAMPLE:
        kmax = tl.max(bk, axis=1)
        kidx = tl.min(tl.where(bk == kmax[:, None], bi, BIG_INDEX), axis=1)
        token = tl.where(sample, kidx, token)
        x_tok = tl.where(sample, tl.max(tl.where(bi == kidx[:, None], bx, NEG_INF), axis=1), m)

    empty = m == NEG_INF  # no finite logit: token 0, NaN statistics (as the reference)
    nan = float("nan")
    prob = tl.where(empty, nan, tl.exp(x_tok - m_safe) * inv_z)
    p1 = tl.where(empty, nan, inv_z)
    p2 = tl.where(empty, nan, tl.exp(top2 - m_safe) * inv_z)
    entropy = tl.where(empty, nan, entropy)
    tl.store(tok_ptr + rows, tl.where(empty, 0, token).to(tl.int64), mask=row_ok)
    tl.store(prob_ptr + rows, prob, mask=row_ok)
    tl.store(top1_ptr + rows, p1, mask=row_ok)
    tl.store(top2_ptr + rows, p2, mask=row_ok)
    tl.store(ent_ptr + rows, entropy, mask=row_ok)
    if EMBED:  # from the values just stored, so it equals F.linear over them up to rounding
        _embed(w_ptr, b_ptr, emb_ptr, stride_e, rows, row_ok, WIDTH,
               _feature(FEAT0, prob, p1, p2, entropy), _feature(FEAT1, prob, p1, p2, entropy),
               _feature(FEAT2, prob, p1, p2, entropy), NUM_FEATS, BLOCK_W)


def pick_config(vocab: int, rows: int, on_gpu: bool) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_V, num_warps, UNROLL). Large V: one row per program and 4 chunks loaded
    per iteration, of 1024 columns from 1,024 rows up and of 2048 below (fewer programs than
    the GPU holds at once: each does more per iteration), the fastest configs of the H200 sweep
    in docs/BENCHMARKS.md; small V: pack rows."""
    block_v = min(triton.next_power_of_2(vocab), 2048 if on_gpu and rows < 1024 else 1024)
    block_n = max(1, min(16, (1024 if on_gpu else 4096) // block_v))
    chunks = triton.cdiv(vocab, block_v)
    unroll = 4 if chunks >= 4 else 2 if chunks >= 2 else 1
    return block_n, block_v, 8 if block_n * block_v >= 1024 else 4, unroll


def confidence_stats_triton(logits: torch.Tensor, temperature: torch.Tensor | None,
                            seeds: torch.Tensor | None, exclude_token_id: int | None,
                            out: ConfidenceStats | None = None,
                            config: tuple[int, int, int, int] | None = None,
                            policy_input: PolicyInput | None = None) -> ConfidenceStats:
    """temperature: float32 [N] or None (greedy); seeds: int64 [N], needed if temperature is set.
    out: optional preallocated outputs (tests pre-fill them with poison; its embedding, if
    policy_input is given, may be any [N, width] fp32 view with unit column stride);
    config: see pick_config; policy_input: (weight [width, F], bias [width] or None, features)
    adds the policy's input embedding (reference.py) in the same launch.
    """
    n, vocab = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    embed = policy_input is not None
    if embed:
        weight, bias, features = check_policy_input(policy_input, logits.device)
        width = weight.shape[0]
        codes = [POLICY_FEATURES.index(f) for f in features] + [0] * (3 - len(features))
    if out is None:
        out = empty_stats(n, logits.device, width if embed else None)
    elif embed and out.embedding is None:
        out = out._replace(embedding=torch.empty(n, width, device=logits.device))
    if embed:
        emb = out.embedding
        if (emb.shape != (n, width) or emb.dtype != torch.float32 or emb.stride(1) != 1
                or emb.device != logits.device):
            raise ValueError(f"out.embedding must be float32 [{n}, {width}] with unit column "
                             f"stride on {logits.device}")
    if n == 0:
        return out
    on_gpu = logits.device.type == "cuda"
    block_n, block_v, num_warps, unroll = config or pick_config(vocab, n, on_gpu)
    if unroll not in (1, 2, 4):
        raise ValueError(f"UNROLL must be 1, 2 or 4, got {unroll}")
    sample = temperature is not None
    if sample:
        temperature = temperature.to(device=logits.device, dtype=torch.float32).contiguous()
        seeds = seeds.to(device=logits.device, dtype=torch.int64).contiguous()
    exclude = -1 if exclude_token_id is None else int(exclude_token_id)
    _confidence_kernel[(triton.cdiv(n, block_n),)](
        logits, logits.stride(0),
        temperature if sample else logits, seeds if sample else logits,  # unused if not SAMPLE
        out.token, out.prob, out.top1, out.top2, out.entropy,
        weight if embed else logits, bias if embed else logits,  # unused if not EMBED
        emb if embed else logits, emb.stride(0) if embed else 0, width if embed else 0,
        n, vocab, exclude,
        SAMPLE=sample, PRECISE_LOG=on_gpu,
        BLOCK_N=block_n, BLOCK_V=block_v, UNROLL=unroll,
        EMBED=embed, NUM_FEATS=len(features) if embed else 1,
        FEAT0=codes[0] if embed else 0, FEAT1=codes[1] if embed else 0,
        FEAT2=codes[2] if embed else 0,
        BLOCK_W=min(triton.next_power_of_2(width), 128) if embed else 1,
        num_warps=num_warps)
    return out
