"""GPU benchmark of the fused confidence kernel against eager and compiled PyTorch.

    python bench/confidence_kernel.py [--json bench.json] [--rows 256 1024 4096 16384]
                                      [--vocab 126464 152064] [--policy-only | --no-policy]

On CUDA it first checks the Triton kernel against the torch reference on a few shapes and
on every launch config it times (exit 1 on any failure), then for each bf16 [rows, vocab]:
  fused     the Triton kernel, greedy (T = 0), with its default config and a small sweep
  fused T>0 the Triton kernel with Gumbel sampling on every row
  +emb      the Triton kernel, greedy, with the policy-input epilogue (width 128, 3 features)
  then lin  the plain kernel followed by the same embedding as separate torch ops (stack of
            the features + F.linear): what the epilogue replaces
  eager     softmax + max + topk(2) + entropy as separate fp32 PyTorch ops
  compile   torch.compile of that eager function (default mode; shapes recompile)
  copy      a device-to-device copy of the same bytes (reads + writes them: 2x the traffic)
Timing: CUDA events around every call, median of many calls, inputs rotating over >= 4
buffers of >= 256 MB in total so the input is never L2-resident; a spin kernel first lets the
CPU queue the calls so launch overhead is not timed. GB/s counts the logits read once;
"% copy" compares it with the copy's read + write bandwidth.

Policy block ("does fusing the learned policy's block pay?"): PolicyNet.forward_embedded at
width 128 (2 heads, FFN 512, fp32) over B x L positions, L in {256, 1024}, B in {1, 16}, as
  eager       plain PyTorch
  compile     torch.compile (default mode, static shapes)
  cudagraph   torch.compile(mode="reduce-overhead"): CUDA graphs, no per-kernel launch cost
each as GPU time (CUDA events, calls queued) and as wall time per call (back-to-back calls,
host launch cost included; equals the GPU time when the GPU is the bottleneck). Against:
  logits      the per-step logits pass at that size: the kernel (+emb) over B*L x 126464 bf16
  LM head     LLaDA-8B's output projection, bf16 [B*L, 4096] @ [4096, 126464]
  layers      LLaDA-8B's 32 blocks: the project's LLaDABlock at 8B sizes, bf16, one timed x 32
  step        layers + LM head + logits + the policy block: one denoising step of LLaDA-8B
  floor       the block's FLOPs at the fp32 GEMM rate measured on this card (4096^3), plus
              one launch (5 us): no fused kernel can run faster
Decision rule (printed), per shape: a fused kernel can at most save best - floor, so fusing the
block pays only if that headroom is >= 5% of the step the policy runs in.
Launch cost (wall >> GPU time) is removed by CUDA graphs without writing a kernel.
Without CUDA it runs the correctness check under Triton's interpreter on a tiny shape and a
smoke run of the policy forward on CPU (nothing timed).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time

import torch
from unmaskd.kernels.reference import (
    POLICY_FEATURES,
    confidence_stats_torch,
    gumbel_noise,
    policy_embedding,
)

SWEEP = [(1, 2048, 8, 4), (1, 1024, 4, 4), (1, 1024, 16, 4), (1, 512, 4, 4), (1, 512, 8, 4),
         (1, 256, 2, 4)]  # (BLOCK_N, BLOCK_V, num_warps, UNROLL); the default is timed apart
MIN_BUFFER_BYTES = 256 * 2**20
PROB_TOL, ENT_TOL, KEY_TIE = 1e-5, 1e-4, 1e-4
EMB_TOL = 1e-5  # embedding vs F.linear over the kernel's own statistics (rtol and atol)
POLICY_WIDTH, LLADA_HIDDEN, LLADA_VOCAB = 128, 4096, 126464
LLADA_LAYERS, LLADA_HEADS, LLADA_MLP = 32, 32, 12288  # LLaDA-8B's config.json
POLICY_SHAPES = [(16, 1024), (1, 1024), (1, 256), (16, 256)]  # (B, L); saved row by row, big first
FUSE_THRESHOLD = 0.05  # (best - floor) / step below this: fusing the block does not pay
LAUNCH_MS = 0.005  # a fused block is still one launch


def policy_layer(device: str, width: int = POLICY_WIDTH, seed: int = 0):
    """(weight, bias, features) of a policy input Linear with all three features."""
    gen = torch.Generator(device).manual_seed(seed)
    return (torch.randn(width, len(POLICY_FEATURES), device=device, generator=gen),
            torch.randn(width, device=device, generator=gen), POLICY_FEATURES)


def make_logits(n: int, v: int, dtype: torch.dtype, device: str, seed: int) -> torch.Tensor:
    gen = torch.Generator(device).manual_seed(seed)
    x = torch.randn(n, v, device=device, generator=gen) * 3
    x[torch.rand(n, v, device=device, generator=gen) < 0.01] = float("-inf")
    x[::3, v // 2] = x[::3, v // 3] = x[::3].amax(dim=1) + 1  # exact ties at the max
    return x.to(dtype)


def check_one(x, temps, seeds, exclude, ref, config, policy_input) -> bool:
    from unmaskd.kernels.triton_confidence import confidence_stats_triton

    n, v = x.shape
    got = confidence_stats_triton(x, temps, seeds, exclude, config=config,
                                  policy_input=policy_input)
    bad = (got.token != ref.token).nonzero().flatten()
    ties = 0
    for i in bad.tolist():
        if temps[i] <= 0:  # a greedy mismatch is never excused
            continue
        row = x[i].double()
        if exclude is not None:
            row[exclude] = float("-inf")
        keys = row / temps[i].double() + gumbel_noise(seeds[i:i + 1], v)[0]
        ties += bool((keys[got.token[i]] - keys[ref.token[i]]).abs() <= KEY_TIE)
    same = got.token == ref.token  # prob is of the token: compare where tokens agree
    perr = max((got.prob - ref.prob)[same].abs().max().item(),
               (got.top1 - ref.top1).abs().max().item(),
               (got.top2 - ref.top2).abs().max().item())
    eerr = (got.entropy - ref.entropy).abs().max().item()
    emb = "-"
    if policy_input is not None:  # the epilogue vs F.linear over the statistics it wrote
        want = policy_embedding(got, *policy_input)
        emb = "ok" if bool(((got.embedding - want).abs()
                            <= EMB_TOL + EMB_TOL * want.abs()).all()) else "WRONG"
    passed = ties == len(bad) and perr <= PROB_TOL and eerr <= ENT_TOL and emb != "WRONG"
    print(f"check {n}x{v} {str(x.dtype)[6:]} exclude={exclude} config={config}: "
          f"token mismatches {len(bad)} (near-ties {ties}), max prob err {perr:.2e}, "
          f"max entropy err {eerr:.2e}, embedding {emb} -> {'ok' if passed else 'FAIL'}")
    return passed


def check(cases, configs=(None,)) -> bool:
    """Kernel (without and with the policy-input epilogue) vs reference. Sampled tokens may
    differ only at a near-tie of the reference keys."""
    ok = True
    for n, v, dtype, device, exclude in cases:
        x = make_logits(n, v, dtype, device, seed=n + v)
        temps = torch.tensor([0.0, 0.6, 1.0, 1.5], device=device).repeat(n)[:n]
        seeds = torch.arange(n, device=device) * 0x9E3779B97F4A7C + 17
        ref = confidence_stats_torch(x, temps, seeds, exclude)
        layer = policy_layer(device)
        for config in configs:
            for policy_input in (None, layer):  # without / with the embedding epilogue
                ok &= check_one(x, temps, seeds, exclude, ref, config, policy_input)
    return ok


def check_engine(n: int = 128) -> bool:
    """The embedded dLLM decoded on CUDA with the Triton kernel and with the torch reference:
    greedy block top-k must give the same tokens; sampled threshold (T = 0.8) and the shipped
    learned policies (block and full diffusion) draw random numbers against probabilities that
    differ in the last bits (fp32 kernel vs fp64 reference), so their matches are reported;
    accuracy is printed as a sanity check."""
    from unmaskd.dllm import EMBEDDED_MODEL_DIR
    from unmaskd.engine.loop import Engine
    from unmaskd.engine.model_args import load_policies
    from unmaskd.engine.sequence import GenerationRequest
    from unmaskd.tasks.arithmetic import check_answer, make_split

    engine = Engine.from_dir(EMBEDDED_MODEL_DIR, device="cuda")
    load_policies(EMBEDDED_MODEL_DIR / "policies", EMBEDDED_MODEL_DIR)
    problems = make_split("validation", n)
    prompts = [engine.tokenizer(p.prompt)["input_ids"] for p in problems]
    runs = {"topk block 1/step": dict(sampler="topk_confidence", block_length=12),
            "threshold 0.7 T=0.8": dict(sampler="threshold", sampler_params={"threshold": 0.7},
                                        temperature=0.8),
            "learned block": dict(sampler="learned", block_length=12),
            "learned full": dict(sampler="learned", block_length=48)}
    ok = True
    for label, kw in runs.items():
        out = {}
        reqs = [GenerationRequest(ids, seed=i, **kw) for i, ids in enumerate(prompts)]
        for backend in ("torch", "triton"):
            os.environ["UNMASKD_KERNEL"] = backend
            try:
                out[backend] = engine.generate(reqs)
            finally:  # the timings after this check must use the dispatcher's own choice
                os.environ.pop("UNMASKD_KERNEL")
        same = sum(a.token_ids == b.token_ids for a, b in zip(out["torch"], out["triton"]))
        acc = {k: sum(check_answer(r.text, p.value) for r, p in zip(v, problems)) / n
               for k, v in out.items()}
        strict = kw["sampler"] == "topk_confidence"  # greedy: no near-tie excuse
        passed = same == n or not strict
        print(f"engine on CUDA, {label}: {same}/{n} identical, accuracy torch "
              f"{acc['torch']:.3f} triton {acc['triton']:.3f} -> {'ok' if passed else 'FAIL'}"
              + ("" if strict else " (random draws: a near-tie may flip a token)"))
        ok &= passed
    return ok


def eager_stats(x: torch.Tensor):
    x = x.float()
    p = torch.softmax(x, dim=-1)
    prob, token = p.max(dim=-1)
    top2 = p.topk(2, dim=-1).values[:, 1]
    entropy = -(p * torch.log_softmax(x, dim=-1)).sum(dim=-1)
    return token, prob, top2, entropy


def time_ms(fn, inputs, budget_s: float = 0.5) -> float:
    """Median ms per call of fn(inputs[i % len(inputs)])."""
    for x in inputs:  # warm-up: compiles, autotunes, touches every buffer
        fn(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(inputs[0])
    end.record()
    torch.cuda.synchronize()
    runs = max(10, min(100, int(budget_s * 1e3 / max(start.elapsed_time(end), 1e-3))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(runs)]
    torch.cuda._sleep(100_000_000)  # ~50 ms spin: the CPU queues the calls meanwhile
    for i, (s, e) in enumerate(events):
        s.record()
        fn(inputs[i % len(inputs)])
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def try_time(fn, inputs, name: str) -> float | None:
    """None (and a printed reason) where the baseline runs out of memory or fails to compile:
    one failed baseline must not cost the other rows."""
    try:
        return time_ms(fn, inputs)
    except Exception as err:  # OutOfMemoryError, or torch.compile's BackendCompilerFailed
        print(f"{name} failed: {type(err).__name__}: {str(err)[:200]}")
        torch.cuda.empty_cache()
        return None


def bench_shape(n: int, v: int, compiled) -> dict:
    from unmaskd.kernels.triton_confidence import confidence_stats_triton, pick_config

    nbytes = n * v * 2
    nbuf = max(4, math.ceil(MIN_BUFFER_BYTES / nbytes))
    inputs = [torch.randn(n, v, device="cuda", dtype=torch.bfloat16) * 3 for _ in range(nbuf)]
    temps = torch.full((n,), 0.8, device="cuda")
    seeds = torch.arange(n, device="cuda")
    dst = torch.empty_like(inputs[0])
    row = {"rows": n, "vocab": v, "buffers": nbuf, "logits_mb": nbytes / 2**20,
           "default_config": pick_config(v, n, True)}
    row["fused_ms"] = time_ms(lambda x: confidence_stats_triton(x, None, None, None), inputs)
    row["fused_sample_ms"] = time_ms(lambda x: confidence_stats_triton(x, temps, seeds, None),
                                     inputs)
    layer = policy_layer("cuda")
    row["fused_emb_ms"] = time_ms(
        lambda x: confidence_stats_triton(x, None, None, None, policy_input=layer), inputs)
    row["fused_then_linear_ms"] = time_ms(
        lambda x: policy_embedding(confidence_stats_triton(x, None, None, None), *layer), inputs)
    sweep = {c: time_ms(lambda x, c=c: confidence_stats_triton(x, None, None, None, config=c),
                        inputs) for c in SWEEP}
    best = min(sweep, key=sweep.get)
    row["sweep_ms"] = {str(c): t for c, t in sweep.items()}
    row["best_config"], row["best_ms"] = best, sweep[best]
    row["copy_ms"] = time_ms(lambda x: dst.copy_(x), inputs)
    dst = None  # free it before the memory-hungry eager run
    row["eager_ms"] = try_time(eager_stats, inputs, f"eager {n}x{v}")
    row["compile_ms"] = try_time(compiled, inputs, f"compile {n}x{v}")
    gbs = nbytes / row["fused_ms"] / 1e6
    row["fused_gbs"] = gbs
    row["copy_pct"] = 100 * gbs / (2 * nbytes / row["copy_ms"] / 1e6)
    del inputs
    torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict], device: str, date: str) -> str:
    def ms(t):
        return "OOM" if t is None else f"{t:.3f}"

    def ratio(t, base):
        return "-" if t is None else f"{t / base:.1f}x"

    lines = [f"Device: {device}, {date}, bf16 logits", "",
             ("| rows x vocab | fused ms | fused T>0 ms | +emb ms | then lin ms | eager ms "
              "| compile ms | copy ms | fused GB/s | % copy BW | vs eager | vs compile "
              "| best config (ms) |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r['rows']} x {r['vocab']}", ms(r["fused_ms"]), ms(r["fused_sample_ms"]),
                 ms(r["fused_emb_ms"]), ms(r["fused_then_linear_ms"]),
                 ms(r["eager_ms"]), ms(r["compile_ms"]), ms(r["copy_ms"]),
                 f"{r['fused_gbs']:.0f}", f"{r['copy_pct']:.0f}%",
                 ratio(r["eager_ms"], r["fused_ms"]), ratio(r["compile_ms"], r["fused_ms"]),
                 f"{r['best_config']} ({ms(r['best_ms'])})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def policy_inputs(B: int, L: int, device: str, seed: int):
    """(embedding [B, L, 128], mask_bits, t, valid) as the engine would pass them."""
    gen = torch.Generator(device).manual_seed(seed)
    emb = torch.randn(B, L, POLICY_WIDTH, device=device, generator=gen)
    mask_bits = torch.rand(B, L, device=device, generator=gen) < 0.5
    t = torch.rand(B, device=device, generator=gen)
    valid = torch.ones(B, L, dtype=torch.bool, device=device)
    valid[B // 2:, L - L // 8:] = False  # some rows shorter: a real key-padding mask
    return emb, mask_bits, t, valid


def policy_net(device: str):
    """A PolicyNet at serving size with every weight random (the zero-initialised adaLN and
    head would otherwise let kernels skip nothing but make the output constant)."""
    from unmaskd.sampler_plugins.policy_net import PolicyNet

    torch.manual_seed(0)
    net = PolicyNet(POLICY_FEATURES, width=POLICY_WIDTH)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return net.to(device).eval()


def policy_flops(net, B: int, L: int) -> float:
    """Multiply-adds x 2 of one forward_embedded: per position adaLN (w x 6w), qkv (w x 3w),
    proj, FFN (2 w ffn), head; attention 2 L w per query (QK^T and PV); per row the time MLP."""
    w, ffn = net.width, net.ffn
    per_pos = 6 * w * w + 3 * w * w + w * w + 2 * w * ffn + w + 2 * L * w
    return 2.0 * B * (L * per_pos + 2 * w * w)


def wall_ms(fn, x, calls: int = 50) -> float:
    """Wall ms per call of back-to-back calls: host launch cost included."""
    fn(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / calls


def logits_pass_ms(n: int, v: int, shape_rows: list[dict]) -> float:
    """The kernel with the embedding epilogue over [n, v] bf16: from the shape table if it
    has that shape, else timed here."""
    for r in shape_rows:
        if r["rows"] == n and r["vocab"] == v:
            return r["fused_emb_ms"]
    from unmaskd.kernels.triton_confidence import confidence_stats_triton

    nbuf = max(4, math.ceil(MIN_BUFFER_BYTES / (n * v * 2)))
    inputs = [torch.randn(n, v, device="cuda", dtype=torch.bfloat16) for _ in range(nbuf)]
    layer = policy_layer("cuda")
    t = time_ms(lambda x: confidence_stats_triton(x, None, None, None, policy_input=layer),
                inputs)
    del inputs
    torch.cuda.empty_cache()
    return t


def lm_head_ms(n: int, v: int) -> float | None:
    """LLaDA-8B's output projection alone: bf16 [n, 4096] @ [4096, v]."""
    try:
        x = torch.randn(n, LLADA_HIDDEN, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(v, LLADA_HIDDEN, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(n, v, device="cuda", dtype=torch.bfloat16)
        return time_ms(lambda a: torch.matmul(a, w.t(), out=out), [x])
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        x = w = out = None
        torch.cuda.empty_cache()


def llada_layers_ms(B: int, L: int) -> float | None:
    """LLaDA-8B's 32 transformer blocks over [B, L] in bf16: one block of the project's own
    LLaDABlock at LLaDA-8B's sizes (random weights, no mask) timed, times 32."""
    from unmaskd.dllm.layers import rotary_tables
    from unmaskd.dllm.llada import LLaDABlock, LLaDAConfig

    cfg = LLaDAConfig(d_model=LLADA_HIDDEN, n_layers=1, n_heads=LLADA_HEADS,
                      mlp_hidden_size=LLADA_MLP, vocab_size=LLADA_VOCAB,
                      embedding_size=LLADA_VOCAB, max_sequence_length=4096,
                      rope_theta=500000.0, mask_token_id=126336, eos_token_id=126081,
                      pad_token_id=126081)
    try:
        block = LLaDABlock(cfg).to("cuda", torch.bfloat16).eval()
        x = torch.randn(B, L, LLADA_HIDDEN, device="cuda", dtype=torch.bfloat16)
        pos = torch.arange(L, device="cuda").expand(B, L)
        rope = rotary_tables(pos, LLADA_HIDDEN // LLADA_HEADS, cfg.rope_theta)
        with torch.no_grad():
            return LLADA_LAYERS * time_ms(lambda a: block(a, rope, None), [x])
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        block = x = None
        torch.cuda.empty_cache()


def fp32_gemm_tflops() -> float:
    """The card's achievable fp32 matmul rate (TF32 as torch is configured: off by default)."""
    a = torch.randn(4096, 4096, device="cuda")
    out = torch.empty_like(a)
    return 2 * 4096**3 / time_ms(lambda x: torch.matmul(x, x, out=out), [a]) / 1e9


def bench_policy(B: int, L: int, shape_rows: list[dict], peak_tflops: float) -> dict:
    net = policy_net("cuda")
    inputs = [policy_inputs(B, L, "cuda", seed) for seed in range(2)]
    row = {"B": B, "L": L, "positions": B * L, "gflop": policy_flops(net, B, L) / 1e9}
    variants = {"eager": net.forward_embedded,
                "compile": torch.compile(net.forward_embedded, dynamic=False),
                "cudagraph": torch.compile(net.forward_embedded, mode="reduce-overhead",
                                           dynamic=False)}
    with torch.no_grad():
        for name, f in variants.items():
            def call(a, f=f):
                return f(*a)
            try:
                for _ in range(3):  # compile; CUDA graph trees warm up, then record
                    for a in inputs:
                        call(a)
                row[f"{name}_ms"] = time_ms(call, inputs)
                row[f"{name}_wall_ms"] = wall_ms(call, inputs[0])
            except Exception as err:  # a failed compile must not hide the other numbers
                print(f"policy {name} B={B} L={L} failed: {type(err).__name__}: {err}")
                row[f"{name}_ms"] = row[f"{name}_wall_ms"] = None
    torch._dynamo.reset()
    times = {k: row[f"{k}_ms"] for k in variants if row[f"{k}_ms"] is not None}
    best = min(times, key=times.get)
    row["best"], row["best_ms"] = best, times[best]
    row["tflops"] = row["gflop"] / row["best_ms"]  # GFLOP / ms = TFLOP/s
    row["logits_ms"] = logits_pass_ms(B * L, LLADA_VOCAB, shape_rows)
    row["lm_head_ms"] = lm_head_ms(B * L, LLADA_VOCAB)
    row["layers_ms"] = llada_layers_ms(B, L)
    # The denoising step the policy sits in: LLaDA-8B's forward (32 blocks + LM head), the
    # confidence pass over its logits, and the policy block itself (best unfused variant).
    row["step_ms"] = (row["layers_ms"] or 0.0) + (row["lm_head_ms"] or 0.0) \
        + row["logits_ms"] + row["best_ms"]
    row["share_logits"] = row["best_ms"] / row["logits_ms"]
    row["share_step"] = row["best_ms"] / row["step_ms"]
    row["floor_ms"] = row["gflop"] / peak_tflops + LAUNCH_MS
    row["headroom_step"] = max(0.0, row["best_ms"] - row["floor_ms"]) / row["step_ms"]
    row["fusing_pays"] = row["headroom_step"] >= FUSE_THRESHOLD
    return row


def policy_markdown(rows: list[dict]) -> str:
    def ms(t):
        return "-" if t is None else f"{t:.3f}"

    lines = ["", "Policy block (PolicyNet.forward_embedded, width 128, fp32), ms: GPU time / "
             "wall time per call", "",
             ("| B x L | eager | compile | cudagraph | best | floor | logits pass | LM head "
              "| 32 layers | step | best / logits | best / step | (best - floor) / step "
              "| best TFLOP/s | fusing pays? |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r['B']} x {r['L']}",
                 *(f"{ms(r[f'{k}_ms'])} / {ms(r[f'{k}_wall_ms'])}"
                   for k in ("eager", "compile", "cudagraph")),
                 f"{r['best']} {ms(r['best_ms'])}", ms(r["floor_ms"]), ms(r["logits_ms"]),
                 ms(r["lm_head_ms"]), ms(r["layers_ms"]), ms(r["step_ms"]),
                 f"{100 * r['share_logits']:.1f}%", f"{100 * r['share_step']:.1f}%",
                 f"{100 * r['headroom_step']:.1f}%", f"{r['tflops']:.1f}",
                 "yes" if r["fusing_pays"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    pays = [f"{r['B']}x{r['L']}" for r in rows if r["fusing_pays"]]
    lines += ["", f"Decision rule: a fused policy-block kernel can at most save best - floor; it "
              f"pays only where that is >= {100 * FUSE_THRESHOLD:.0f}% of the LLaDA-8B step."]
    if not pays:
        lines.append("Verdict: NO at every measured shape -> no fused policy-block kernel; on "
                     "GPU run the block compiled, with CUDA graphs where wall >> GPU time.")
    else:
        lines.append(f"Verdict: fusing pays at {', '.join(pays)}, by at most the "
                     "(best - floor) / step column.")
    return "\n".join(lines)


def smoke_policy() -> bool:
    """CPU: forward_embedded on the kernel's embedding equals forward on the features."""
    import torch.nn.functional as F
    from unmaskd.kernels import confidence_stats

    net = policy_net("cpu")
    B, L, V = 2, 64, 300
    logits = torch.randn(B * L, V)
    stats = confidence_stats(logits, policy_input=(net.input.weight, net.input.bias,
                                                   net.features))
    feats = torch.stack([stats.prob, stats.top1 - stats.top2, stats.entropy], -1)
    _, mask_bits, t, valid = policy_inputs(B, L, "cpu", 0)
    with torch.no_grad():
        want = net(feats.view(B, L, -1), mask_bits, t, valid)
        got = net.forward_embedded(stats.embedding.view(B, L, -1), mask_bits, t, valid)
        same_layer = torch.equal(stats.embedding, F.linear(feats, net.input.weight,
                                                           net.input.bias))
    ok = same_layer and torch.equal(got, want)
    print(f"policy smoke (CPU, torch path): forward_embedded == forward -> "
          f"{'ok' if ok else 'FAIL'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--rows", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    ap.add_argument("--vocab", type=int, nargs="+", default=[126464, 152064])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--policy-only", action="store_true",
                       help="only the policy-block measurement (times its own logits pass)")
    group.add_argument("--no-policy", action="store_true",
                       help="skip the policy-block measurement")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print("No CUDA device: nothing to time. Checking the kernel under Triton's interpreter.")
        os.environ["TRITON_INTERPRET"] = "1"  # before kernels.triton_confidence is imported
        ok = check([(5, 300, torch.bfloat16, "cpu", 7), (3, 1000, torch.float32, "cpu", None)])
        ok &= smoke_policy()
        return 0 if ok else 1

    big = [(64, v, torch.bfloat16, "cuda", v - 128) for v in args.vocab]
    ok = check([(3, 1000, torch.float32, "cuda", 0), (300, 5000, torch.bfloat16, "cuda", None),
                (37, 152064, torch.float16, "cuda", None), *big])
    ok &= check(big[:1], configs=SWEEP)
    if not ok:
        print("correctness check FAILED")
        return 1
    engine_ok = check_engine()  # reported, and in the exit code, but the timings still run

    import triton

    device = torch.cuda.get_device_name()
    date = datetime.datetime.now().isoformat(timespec="seconds")
    rows, policy_rows = [], []

    def save() -> None:  # after every row: a run cut short still leaves its numbers
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": device, "date": date, "torch": torch.__version__,
                           "triton": triton.__version__, "engine_check_ok": engine_ok,
                           "results": rows, "policy": policy_rows}, f, indent=1, default=str)

    compiled = torch.compile(eager_stats)
    for v in [] if args.policy_only else args.vocab:
        for n in args.rows:
            rows.append(bench_shape(n, v, compiled))
            print(rows[-1], flush=True)
            save()
    peak = None if args.no_policy else fp32_gemm_tflops()
    for B, L in [] if args.no_policy else POLICY_SHAPES:
        policy_rows.append(bench_policy(B, L, rows, peak))
        print(policy_rows[-1], flush=True)
        save()
    if rows:
        print(markdown(rows, device, date))
    if policy_rows:
        if not rows:
            print(f"Device: {device}, {date}")
        print(policy_markdown(policy_rows))
    save()
    return 0 if engine_ok else 1


if __name__ == "__main__":
    sys.exit(main())
