"""The learned policy: network, likelihood, files, sampler, and its GRPO trainer."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from unmaskd.engine.sequence import GenerationRequest, InvalidRequest
from unmaskd.sampler_plugins.learned import recorded_steps
from unmaskd.sampler_plugins.policy_net import PolicyNet, bernoulli_log_prob, unmask_probs
from unmaskd.sampler_plugins.policy_store import (
    STORE,
    Policy,
    PolicyError,
    load_policy,
    model_fingerprint,
    save_policy,
)


def test_network_size_and_initial_unmask_probability():
    net = PolicyNet()
    n_params = sum(p.numel() for p in net.parameters())
    assert 250_000 < n_params < 400_000  # the paper's ~300K
    logits = net(torch.rand(2, 10, 1), torch.ones(2, 10, dtype=torch.bool), torch.rand(2),
                 torch.ones(2, 10, dtype=torch.bool))
    torch.testing.assert_close(torch.sigmoid(logits), torch.full((2, 10), 0.11920292))


def test_log_likelihood_matches_hand_computation():
    s = torch.tensor([[0.2, 0.5, 0.9, 0.7]])
    action = torch.tensor([[True, False, True, True]])
    decide = torch.tensor([[True, True, True, False]])  # last position is not decided
    expected = torch.log(torch.tensor(0.2)) + torch.log(torch.tensor(0.5)) + \
        torch.log(torch.tensor(0.9))
    torch.testing.assert_close(bernoulli_log_prob(s, action, decide), expected.reshape(1))
    # beta-scaling and temperature: s = min(1, beta * sigmoid(b / tau))
    b = torch.tensor([0.0, 2.0])
    sig1 = torch.sigmoid(torch.tensor(1.0)).item()
    expected = torch.tensor([min(1.0, 3 * 0.5), min(1.0, 3 * sig1)])
    torch.testing.assert_close(unmask_probs(b, 2.0, 3.0), expected)


@pytest.fixture
def shipped_like_policy(tiny_model_dir, tmp_path):
    net = PolicyNet(("confidence", "margin"))
    meta = {"name": "p", "block_length": 4, "gen_length": 16, "alpha": 1.0,
            "model": {"name": "tiny", "fingerprint": model_fingerprint(tiny_model_dir)}}
    save_policy(net, tmp_path / "p", meta)
    return tmp_path / "p"


def test_policy_files_round_trip_and_refusals(shipped_like_policy, tiny_model_dir):
    fp = model_fingerprint(tiny_model_dir)
    policy = load_policy(shipped_like_policy, fp)
    assert policy.net.features == ("confidence", "margin")
    with pytest.raises(PolicyError, match="trained for"):
        load_policy(shipped_like_policy, "0123456789abcdef")
    from safetensors.torch import load_file, save
    state = load_file(str(shipped_like_policy / "policy.safetensors"))
    state["input.weight"] = torch.zeros(128, 3)  # wrong shape, in a file policy.json vouches for
    data = save(state)
    (shipped_like_policy / "policy.safetensors").write_bytes(data)
    meta = json.loads((shipped_like_policy / "policy.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    (shipped_like_policy / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(PolicyError, match="do not match"):
        load_policy(shipped_like_policy, fp)
    meta["architecture"]["features"] = ["confidence", "bogus"]
    (shipped_like_policy / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(PolicyError, match="malformed"):
        load_policy(shipped_like_policy, fp)


def test_learned_sampler_end_to_end(tiny_engine, shipped_like_policy, tiny_model_dir):
    STORE.add(load_policy(shipped_like_policy, model_fingerprint(tiny_model_dir)))
    try:
        ids = tiny_engine.tokenizer("Question: Ava has 3 eggs.\nAnswer:")["input_ids"]
        # bernoulli-argmax never commits zero positions, even with a tiny beta
        (r,) = tiny_engine.generate([GenerationRequest(
            ids, "learned", {"beta": 0.001}, gen_length=16, block_length=4, steps=16)])
        assert r.nfe == 16 and min(r.step_counts) == 1
        (fast,) = tiny_engine.generate([GenerationRequest(
            ids, "learned", {"beta": 100.0, "policy_temperature": 1.0}, gen_length=16,
            block_length=4, steps=16)])
        assert fast.nfe == 4  # everything in the block at once: 100 * sigmoid(-2) > 1
        vr = tiny_engine.validate(GenerationRequest(ids, "learned", gen_length=16,
                                                    block_length=16))
        assert vr.params.policy == "p"  # the closest block length is the only one
        with pytest.raises(InvalidRequest, match="unknown policy"):
            tiny_engine.validate(GenerationRequest(ids, "learned", {"policy": "nope"}))
        with pytest.raises(InvalidRequest, match="sampler_params.beta"):
            tiny_engine.validate(GenerationRequest(ids, "learned", {"beta": 0}))
    finally:
        STORE.remove("p")
    with pytest.raises(InvalidRequest, match="no learned policy"):
        tiny_engine.validate(GenerationRequest(ids, "learned"))


def test_default_policy_picks_closest_block_then_default_alpha():
    from unmaskd.sampler_plugins.policy_store import PolicyStore

    store = PolicyStore()
    for name, bl, alpha, default in [("b4a1", 4, 1.0, False), ("b4a3", 4, 3.0, True),
                                     ("full", 16, 1.0, False)]:
        store.add(Policy(name, PolicyNet(), {"block_length": bl, "alpha": alpha,
                                              "default": default}))
    assert store.default_for(4) == "b4a3"
    assert store.default_for(6) == "b4a3"
    assert store.default_for(12) == "full"


def test_policy_json_names_its_serving_temperature(tiny_engine):
    STORE.add(Policy("warm", PolicyNet(), {"block_length": 16, "policy_temperature": 1.0}))
    try:
        ids = tiny_engine.tokenizer("Question: Ava has 3 eggs.\nAnswer:")["input_ids"]
        vr = tiny_engine.validate(GenerationRequest(ids, "learned", {"policy": "warm"},
                                                    gen_length=16, block_length=16))
        assert vr.params.policy_temperature == 1.0  # the policy's own
        asked = tiny_engine.validate(GenerationRequest(
            ids, "learned", {"policy": "warm", "policy_temperature": 0.25}, gen_length=16,
            block_length=16))
        assert asked.params.policy_temperature == 0.25  # the request's wins
    finally:
        STORE.remove("warm")


def finish_fast(result, problem, gen_length) -> float:
    """A toy reward with a known optimum (commit everything at once), whatever the answer."""
    return 1.0 - result.nfe / gen_length


def test_trainer_improves_a_toy_reward(tiny_model_dir, tmp_path):
    """Reward only for finishing fast: the optimum (commit everything at once) is known."""
    from unmaskd.training.policy_trainer import train

    train(["--model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--gen-length", "16",
           "--block-length", "full", "--iterations", "12", "--prompts-per-step", "4",
           "--group-size", "8", "--lr", "0.02", "--warmup", "1", "--grad-clip", "1.0",
           "--ckpt-every", "4"], reward_fn=finish_fast)
    log = [json.loads(ln) for ln in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    first, last = log[:3], log[-3:]
    assert sum(r["reward"] for r in last) / 3 > sum(r["reward"] for r in first) / 3 + 0.15
    assert sum(r["nfe"] for r in last) < sum(r["nfe"] for r in first)
    meta = json.loads((tmp_path / "run/policy/policy.json").read_text())
    assert meta["model"]["fingerprint"] == model_fingerprint(tiny_model_dir)
    assert meta["training"]["iterations_done"] == 12


def test_trainer_runs_a_bf16_dllm_with_an_fp32_policy(tiny_model_dir, tmp_path):
    """What a real LLaDA run on a GPU uses (the dLLM in bf16, the policy in fp32), on CPU."""
    from safetensors.torch import load_file
    from unmaskd.training.policy_trainer import train

    train(["--model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--gen-length", "8",
           "--block-length", "4", "--iterations", "2", "--prompts-per-step", "2",
           "--group-size", "4", "--dtype", "bfloat16"],
          reward_fn=finish_fast)
    weights = load_file(str(tmp_path / "run/policy/policy.safetensors"))
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
    log = [json.loads(ln) for ln in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2] and log[0]["zero_advantage"] < 1.0


def test_expert_rollouts_follow_the_threshold_rule(tiny_engine, tiny_model_dir):
    """Expert steering: the commits are exactly Fast-dLLM threshold's; the policy only scores."""
    ids = tiny_engine.tokenizer("Question: Ava has 3 eggs.\nAnswer:")["input_ids"]
    STORE.add(Policy("expert", PolicyNet(), {"block_length": 16}, record=True,
                     expert_threshold=0.3))
    try:
        (expert,) = tiny_engine.generate([GenerationRequest(
            ids, "learned", {"policy": "expert", "mode": "bernoulli"}, gen_length=16,
            block_length=16, steps=16)])
    finally:
        STORE.remove("expert")
    (reference,) = tiny_engine.generate([GenerationRequest(
        ids, "threshold", {"threshold": 0.3}, gen_length=16, block_length=16, steps=16)])
    assert expert.token_ids == reference.token_ids and expert.nfe == reference.nfe
    assert max(expert.step_counts) > 1 and min(expert.step_counts) == 1  # both paths
    steps = recorded_steps(expert.sampler_state)
    assert len(steps) == expert.nfe and all(bool(s.expert) for s in steps)
    assert [int(s.action.sum()) for s in steps] == expert.step_counts


def test_mixture_likelihood_of_expert_steps():
    from unmaskd.training.policy_trainer import mixture_log_prob

    logp = torch.log(torch.tensor([0.2, 0.2]))
    expert = torch.tensor([True, False])
    got = mixture_log_prob(logp, expert, 0.25)
    torch.testing.assert_close(got, torch.log(torch.tensor([0.25 * 0.2 + 0.75, 0.2])))
    torch.testing.assert_close(mixture_log_prob(logp, expert, 1.0), logp)


def test_trainer_with_expert_steering_runs(tiny_model_dir, tmp_path):
    from unmaskd.training.policy_trainer import train

    train(["--model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--gen-length", "8",
           "--block-length", "full", "--iterations", "2", "--prompts-per-step", "2",
           "--group-size", "4", "--expert-rollouts", "2", "--expert-threshold", "0.5"])
    log = [json.loads(ln) for ln in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all("expert_accuracy" in r and r["expert_nfe"] >= 1 for r in log)
    meta = json.loads((tmp_path / "run/policy/policy.json").read_text())
    assert meta["training"]["expert_rollouts"] == 2
    assert "expert steering" in (tmp_path / "run/policy/README.md").read_text()
    assert "__training_expert__" not in STORE.policies
    with pytest.raises(SystemExit):
        train(["--out", str(tmp_path / "bad"), "--expert-mix", "0"])


def test_trainer_resumes_exactly(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from unmaskd.training.policy_trainer import train

    common = ["--model", str(tiny_model_dir), "--gen-length", "8", "--block-length", "4",
              "--prompts-per-step", "2", "--group-size", "4", "--ckpt-every", "2",
              "--lr", "0.01"]
    train(common + ["--out", str(tmp_path / "a"), "--iterations", "4"])
    train(common + ["--out", str(tmp_path / "b"), "--iterations", "2"])
    # resume the same run to 4 iterations: the schedule is a function of --iterations
    ckpt = torch.load(tmp_path / "b/ckpt.pt", weights_only=True)
    assert ckpt["iteration"] == 2
    train(common + ["--out", str(tmp_path / "c"), "--iterations", "4"])
    a = load_file(str(tmp_path / "a/policy/policy.safetensors"))
    c = load_file(str(tmp_path / "c/policy/policy.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)  # seed-deterministic on CPU


def test_trainer_refuses_to_resume_with_other_flags(tiny_model_dir, tmp_path):
    from unmaskd.training.policy_trainer import train

    common = ["--model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--gen-length", "8",
              "--block-length", "4", "--prompts-per-step", "2", "--group-size", "4"]
    train(common + ["--iterations", "1", "--alpha", "1"])
    with pytest.raises(SystemExit, match=r"other flags: --alpha 1.0 \(now 0.3\)"):
        train(common + ["--iterations", "2", "--alpha", "0.3"])
    train(common + ["--iterations", "2", "--alpha", "1", "--threads", "1"])  # same run, longer


def test_trainer_starts_from_an_init_policy(tiny_model_dir, tmp_path):
    """--init: a full-diffusion policy's weights are the block run's starting point (lr 0 keeps
    them); a policy with other inputs is refused naming the flag."""
    from safetensors.torch import load_file
    from unmaskd.training.policy_trainer import train

    common = ["--model", str(tiny_model_dir), "--gen-length", "8", "--prompts-per-step", "2",
              "--group-size", "4"]
    full = train(common + ["--out", str(tmp_path / "full"), "--block-length", "full",
                           "--iterations", "2", "--lr", "0.01"],
                 reward_fn=lambda r, p, L: 1.0 - r.nfe / L)  # the tiny dLLM is never right
    block = ["--block-length", "4", "--iterations", "1", "--lr", "0"]
    fresh = train(common + block + ["--out", str(tmp_path / "fresh")])
    tuned = train(common + block + ["--out", str(tmp_path / "tuned"), "--init", str(full)])
    a, b, c = (load_file(str(d / "policy.safetensors")) for d in (full, tuned, fresh))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # training moved the init's weights
    assert f"initialised from the policy in `{full}`" in (tuned / "README.md").read_text()
    with pytest.raises(SystemExit, match="--init: .*check --features"):
        train(common + ["--out", str(tmp_path / "bad"), "--iterations", "1",
                        "--features", "confidence,margin", "--init", str(full)])


def test_init_from_a_policy_of_another_dllm_starts_from_its_weights(tiny_model_dir, tmp_path,
                                                                     capsys):
    """A policy trained for one dLLM is a starting point for another's (the long model's
    block policies may start from the embedded model's full-diffusion one), said on stderr."""
    from conftest import build_tiny_model
    from safetensors.torch import load_file
    from unmaskd.training.policy_trainer import train

    other = build_tiny_model(tmp_path / "other", seed=1)
    common = ["--gen-length", "8", "--prompts-per-step", "2", "--group-size", "4",
              "--iterations", "1"]
    src = train(common + ["--model", str(tiny_model_dir), "--out", str(tmp_path / "src"),
                          "--lr", "0.01"], reward_fn=lambda r, p, L: 1.0 - r.nfe / L)
    dst = train(common + ["--model", str(other), "--out", str(tmp_path / "dst"), "--lr", "0",
                          "--init", str(src)])
    a, b = (load_file(str(d / "policy.safetensors")) for d in (src, dst))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "starting from its weights anyway" in capsys.readouterr().err
    assert json.loads((dst / "policy.json").read_text())["model"]["name"] == "other"


def test_loss_sample_keeps_every_step_up_to_the_cap_then_a_seeded_subset():
    from unmaskd.training.policy_trainer import loss_sample

    assert loss_sample(5, 8, seed=1) == [0, 1, 2, 3, 4]
    pick = loss_sample(100, 10, seed=1)
    assert len(set(pick)) == 10 and all(0 <= i < 100 for i in pick) and pick == sorted(pick)
    assert pick == loss_sample(100, 10, seed=1) and pick != loss_sample(100, 10, seed=2)


def test_trainer_with_a_loss_step_cap_runs_and_resumes_exactly(tiny_model_dir, tmp_path):
    """--loss-steps below the recorded steps: each pass draws its own seeded subset, so a run
    resumed from its checkpoint ends with the same weights as a straight one."""
    from safetensors.torch import load_file
    from unmaskd.training.policy_trainer import train

    common = ["--model", str(tiny_model_dir), "--gen-length", "8", "--prompts-per-step", "2",
              "--group-size", "4", "--loss-steps", "3", "--lr", "0.01", "--ckpt-every", "1"]
    toy = {"reward_fn": lambda r, p, L: 1.0 - r.nfe / L}
    straight = train(common + ["--out", str(tmp_path / "a"), "--iterations", "2"], **toy)
    train(common + ["--out", str(tmp_path / "b"), "--iterations", "1"], **toy)
    resumed = train(common + ["--out", str(tmp_path / "b"), "--iterations", "2"], **toy)
    a, b = (load_file(str(d / "policy.safetensors")) for d in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_two_processes_end_with_identical_weights(tiny_model_dir, tmp_path):
    """DDP over gloo: each rank rolls out its own prompts (different rewards, so different
    local gradients); after all-reduce the ranks must hold identical weights."""
    script = tmp_path / "ddp_train.py"
    script.write_text(
        "import sys\n"
        "from unmaskd.training.policy_trainer import train\n"
        "train(sys.argv[1:], reward_fn=lambda r, p, L: 1.0 - r.nfe / L)\n")
    # --standalone: torchrun's own rendezvous on a free port (no port picked here and then
    # raced for by another process)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script),
           "--model", str(tiny_model_dir), "--out", str(tmp_path / "ddp"), "--gen-length", "8",
           "--block-length", "4", "--iterations", "3", "--prompts-per-step", "2",
           "--group-size", "4", "--lr", "0.01", "--threads", "1"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(ln) for ln in (tmp_path / "ddp/log.jsonl").read_text().splitlines()]
    checksums = lines[-1]["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert lines[-2]["iteration"] == 3 and lines[-2]["zero_advantage"] < 1.0


def test_engine_hands_the_policy_its_kernel_embedding(tiny_engine, monkeypatch):
    """With one policy in the batch the kernel applies its input layer (view.embedding); the
    commits are exactly those of the network applying it itself."""
    from unmaskd.sampler_plugins.learned import Learned

    torch.manual_seed(0)
    net = PolicyNet(("confidence", "margin"))
    with torch.no_grad():  # fill the zero-initialised adaLN/head so the input matters
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    STORE.add(Policy("emb", net.eval(), {"block_length": 16}))
    used = []
    decide = Learned._decide
    monkeypatch.setattr(Learned, "_decide", lambda self, policy, view, *a: (
        used.append(view.embedding is not None), decide(self, policy, view, *a))[1])
    ids = tiny_engine.tokenizer("Question: Ava has 3 eggs.\nAnswer:")["input_ids"]
    reqs = [GenerationRequest(ids[k:], "learned", {"policy": "emb", "beta": 3.0},
                              gen_length=16, block_length=16, steps=16, seed=k)
            for k in range(3)]
    try:
        fused = tiny_engine.generate(reqs)
        monkeypatch.setattr(Learned, "policy_input", lambda self: None)
        plain = tiny_engine.generate(reqs)
    finally:
        STORE.remove("emb")
    assert used and all(used[:fused[0].nfe]) and not any(used[-plain[0].nfe:])
    assert [r.token_ids for r in fused] == [r.token_ids for r in plain]
    assert [r.step_counts for r in fused] == [r.step_counts for r in plain]
    assert len({tuple(r.step_counts) for r in fused}) > 1 or max(fused[0].step_counts) > 1


def test_first_grpo_pass_reproduces_the_rollout_likelihood(tiny_engine):
    """The loss recomputes each recorded step's log-likelihood with the trainer's rollout knobs:
    before any update the PPO ratio is exactly 1, so with advantage 1 the loss is -1. (If the
    rollouts used the serving defaults, tau 0.25, the ratio would be off and the loss not -1.)"""
    from unmaskd.training.policy_trainer import ROLLOUT_KNOBS, grpo_loss

    torch.manual_seed(0)
    net = PolicyNet()
    with torch.no_grad():  # logits spread around 0, so that tau changes s and draws vary
        net.head.weight.normal_(0.0, 1.0)
        net.head.bias.fill_(0.0)
    STORE.add(Policy("rec", net, {"block_length": 4}, record=True))
    try:
        ids = tiny_engine.tokenizer("Question: Ava has 3 eggs.\nAnswer:")["input_ids"]
        (r,) = tiny_engine.generate([GenerationRequest(
            ids, "learned", {"policy": "rec", **ROLLOUT_KNOBS}, gen_length=16, block_length=4,
            steps=16, seed=1)])
    finally:
        STORE.remove("rec")
    steps = recorded_steps(r.sampler_state)
    assert len(steps) == r.nfe >= 4
    loss = grpo_loss(net, steps, torch.ones(len(steps)), clip=0.5)
    assert loss.item() == pytest.approx(-1.0, abs=1e-6)


def _group(*rewards: float):
    from unmaskd.training.policy_trainer import Group

    return Group(None, [], [], torch.tensor(rewards))


def test_dynamic_sampling_replaces_groups_without_signal_with_fresh_prompts():
    """DAPO's dynamic sampling: a group whose rewards are all equal is replaced by a fresh
    prompt's group; after the last round the uniform ones left are kept (they add nothing)."""
    from unmaskd.training.policy_trainer import ProblemStream, sample_groups

    # prompt d's group has signal when d % 3 == 2
    stream = ProblemStream(list(range(100)), rank=0, world=1)
    roll = lambda draws: [_group(0.0, 1.0) if p % 3 == 2 else _group(0.0, 0.0)  # noqa: E731
                          for _, p in draws]
    kept, first, replaced = sample_groups(stream.take, roll, 4, rounds=10)
    assert all(g.informative for g in kept) and len(kept) == 4
    assert [g.informative for g in first] == [False, False, True, False]
    assert replaced == stream.cursor - 4  # every draw past the first 4 replaced one
    kept, _, replaced = sample_groups(ProblemStream(list(range(100)), 0, 1).take, roll, 4,
                                      rounds=0)
    assert replaced == 0 and sum(g.informative for g in kept) == 1  # off: the paper's skip
    # ranks draw interleaved shares and the stream wraps past its end
    assert [p for _, p in ProblemStream(list(range(6)), 1, 2).take(4)] == [1, 3, 5, 1]


def test_trainer_logs_replaced_groups_and_resumes_the_problem_stream(tiny_model_dir, tmp_path):
    """A reward without signal on half the prompts: the log shows groups replaced and none left
    without signal; a run resumed from its checkpoint draws the same problems (same weights)."""
    from safetensors.torch import load_file
    from unmaskd.training.policy_trainer import train

    def half_uniform(result, problem, L):  # even answers: a reward that tells draws apart
        return 0.0 if problem.value % 2 else 1.0 + len(set(result.trace)) / L + 0.01 * (
            sum(i * t for i, t in enumerate(result.trace)) % 97)

    common = ["--model", str(tiny_model_dir), "--gen-length", "8", "--block-length", "4",
              "--prompts-per-step", "2", "--group-size", "4", "--lr", "0.01",
              "--ckpt-every", "1", "--resample-rounds", "4", "--policy-temperature", "0.5"]
    straight = train(common + ["--out", str(tmp_path / "a"), "--iterations", "3"],
                     reward_fn=half_uniform)
    log = [json.loads(ln) for ln in (tmp_path / "a/log.jsonl").read_text().splitlines()]
    assert sum(r["replaced"] for r in log) > 0
    assert all(r["zero_advantage_final"] <= r["zero_advantage"] for r in log)
    assert sum(r["zero_advantage_final"] for r in log) < sum(r["zero_advantage"] for r in log)
    train(common + ["--out", str(tmp_path / "b"), "--iterations", "2"], reward_fn=half_uniform)
    resumed = train(common + ["--out", str(tmp_path / "b"), "--iterations", "3"],
                    reward_fn=half_uniform)
    a, b = (load_file(str(d / "policy.safetensors")) for d in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((straight / "policy.json").read_text())
    assert meta["training"]["resample_rounds"] == 4
    assert meta["training"]["policy_temperature"] == 0.5
