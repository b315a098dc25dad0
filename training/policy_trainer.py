"""GRPO training of the learned unmasking policy against a frozen dLLM (`unmaskd train-policy`).

    unmaskd train-policy --out runs/policy-b12 --block-length 12 --alpha 1
    torchrun --nproc_per_node 2 -m unmaskd.training.policy_trainer \
        --out runs/p --block-length 48

As in Jazbec et al. 2026: groups of G rollouts per prompt through the engine (the dLLM greedy,
the only randomness the policy's Bernoulli draws); terminal reward
correct * ((L - min(NFE, L) + 1) / L) ** alpha; advantage = reward - group mean; a per-step PPO
ratio clipped at epsilon; mu passes per
rollout batch, each over at most --loss-steps recorded steps (a uniform sample; long canvases
record thousands); no KL term. Rollouts record each step's policy inputs and actions, so the
loss needs no second dLLM pass.

Dynamic sampling (DAPO; `--resample-rounds R`, off by default): a group whose rewards are all
equal has zero
advantage everywhere and teaches nothing, so before the optimiser step it is replaced by a fresh
prompt's group, for up to R rounds; groups still uniform after the last round are kept and add
nothing (the paper's skip). On a weak model most groups are all wrong (76-80% of them for
embedded-long's first policies), so without this most of a step's rollouts were wasted. The run
log's `zero_advantage` is the share of first-draw groups without signal, `replaced` how many
groups were replaced, `zero_advantage_final` the share left without signal after replacing.

Expert steering (`--expert-rollouts E`, meant for full diffusion): each group also gets E
rollouts whose commits follow Fast-dLLM's threshold rule; they share the group's advantage
baseline, and their likelihood is taken under the mixture lambda * policy + (1 - lambda) *
expert, where the deterministic expert gives its own commit probability 1.

`--init DIR` starts from a trained policy's weights instead of the paper's initialisation. On
the embedded model block-mode runs started from scratch collapse to committing each block whole
(`docs/BENCHMARKS.md`); started from a full-diffusion policy, which has already learned to
unmask by confidence, they keep that and match Fast-dLLM's threshold rule.

One deviation: the engine commits at least one token per step whatever a sampler returns, so an
empty Bernoulli draw still makes progress (the dLLM's most confident position) instead of
wasting the step; the loss uses the policy's own draw.

Data-parallel with torchrun (DDP; gloo on CPU, nccl on GPU): each rank rolls out its share of
prompts and DDP all-reduces the gradients.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm
from unmaskd.dllm.checkpoint import TASK_FILE, read_task_file
from unmaskd.engine.loop import Engine
from unmaskd.engine.model_args import (
    add_model_args,
    block_length_arg,
    engine_from_args,
    resolve_block_length,
)
from unmaskd.engine.sequence import GenerationRequest, SequenceResult
from unmaskd.sampler_plugins.learned import recorded_steps
from unmaskd.sampler_plugins.policy_net import (
    FEATURES,
    PolicyNet,
    PolicyStep,
    bernoulli_log_prob,
    unmask_probs,
)
from unmaskd.sampler_plugins.policy_store import (
    STORE,
    OtherModelError,
    Policy,
    PolicyError,
    load_policy,
    model_fingerprint,
    save_policy,
)
from unmaskd.tasks import TASKS, UnknownTask, get_task
from unmaskd.tasks.arithmetic import Problem, check_answer
from unmaskd.tasks.jsonl import (
    CHECKERS_HELP,
    DEFAULT_CHECKER,
    DataError,
    Example,
    checker_arg,
    load_jsonl,
    make_checker,
    repeat,
)

TRAIN_POLICY = "__training__"
TRAIN_EXPERT = "__training_expert__"
TRAIN_VALIDATE = "__training_validate__"  # the same network, decoding as served: no record
RewardFn = Callable[[SequenceResult, Problem | Example, int], float]
Check = Callable[[str, object], bool]  # output text, problem.value -> correct?


def task_reward(alpha: float, check: Check = check_answer) -> RewardFn:
    def reward(result: SequenceResult, problem: Problem | Example, gen_length: int) -> float:
        correct = check(result.text, problem.value)
        speed = (gen_length - min(result.nfe, gen_length) + 1) / gen_length
        return float(correct) * speed**alpha
    return reward


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="unmaskd train-policy", description=__doc__.split("\n")[0])
    add_model_args(ap, serving=False)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default=None, help="policy name (default: the --out folder name)")
    ap.add_argument("--task", choices=sorted(TASKS),
                    help="the built-in task whose train split the rollouts draw from (default: "
                         "the one the model folder's unmaskd_task.json names, else arithmetic)")
    ap.add_argument("--gen-length", type=int,
                    help="canvas (default: the folder's unmaskd_task.json, else 48)")
    ap.add_argument("--block-length", type=block_length_arg,
                    help="N or 'full' (default: the folder's unmaskd_task.json, else L/4)")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--features", default="confidence",
                    help=f"comma-separated subset of {','.join(FEATURES)}")
    ap.add_argument("--init", type=Path, default=None,
                    help="policy folder whose weights to start from instead of the paper's "
                         "initialisation (e.g. a full-diffusion policy, to fine-tune for blocks)")
    ap.add_argument("--data", type=Path, metavar="FILE.jsonl",
                    help="your own problems instead of the built-in task's train split, in the "
                         "format of `unmaskd eval --data`, in shuffled passes; --val-every then "
                         "validates on the file's first --val-n lines (it has no held-out split)")
    ap.add_argument("--checker", type=checker_arg, metavar="final-number|exact|regex:PATTERN",
                    help="with --data, what the reward counts as correct: " + CHECKERS_HELP)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=16, help="per rank")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--mu", type=int, default=2, help="optimisation passes per rollout batch")
    ap.add_argument("--resample-rounds", type=int, default=0,
                    help="dynamic sampling: rounds of replacing groups whose rewards are all "
                         "equal with fresh prompts' groups before the optimiser step (0, the "
                         "default: off, such groups are skipped as in the paper)")
    ap.add_argument("--policy-temperature", type=float, default=1.0,
                    help="tau_pi of the rollouts and the loss (the paper: 0.5 for blocks of 32, "
                         "1.0 for full diffusion); serving keeps its own default")
    ap.add_argument("--loss-steps", type=int, default=1024,
                    help="recorded steps per pass, a uniform sample when the rollouts made more "
                         "(a 256-token canvas records ~100 per rollout; all of them at once "
                         "would take minutes and gigabytes per pass)")
    ap.add_argument("--expert-rollouts", type=int, default=0,
                    help="expert steering: threshold rollouts appended to each group (0: off)")
    ap.add_argument("--expert-threshold", type=float, default=0.9)
    ap.add_argument("--expert-mix", type=float, default=0.5,
                    help="lambda: the policy's weight in the policy/expert mixture likelihood")
    ap.add_argument("--clip", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--grad-clip", type=float, default=0.2)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-every", type=int, default=0)
    ap.add_argument("--val-n", type=int, default=100)
    ap.add_argument("--ckpt-every", type=int, default=5)
    ap.add_argument("--default", action="store_true", help="mark as the default for its mode")
    args = ap.parse_args(argv)
    if args.loss_steps < 1:
        ap.error("--loss-steps must be >= 1")
    if args.expert_rollouts < 0:
        ap.error("--expert-rollouts must be >= 0")
    if args.resample_rounds < 0:
        ap.error("--resample-rounds must be >= 0")
    if not args.policy_temperature > 0.0:
        ap.error("--policy-temperature must be > 0")
    if not 0.0 < args.expert_mix <= 1.0:
        ap.error("--expert-mix must be in (0, 1]")
    if not 0.0 < args.expert_threshold <= 1.0:
        ap.error("--expert-threshold must be in (0, 1]")
    return args


# Rollouts draw every position independently from the network's own probabilities (no beta;
# tau_pi = 1 unless --policy-temperature says otherwise), whatever the serving defaults are; the
# loss uses the same.
ROLLOUT_KNOBS = {"mode": "bernoulli", "policy_temperature": 1.0, "beta": 1.0}


@dataclass
class Group:
    """One prompt's rollouts: G of the policy's, then E of the expert's."""
    problem: Problem | Example
    results: list[SequenceResult]
    correct: list[bool]
    rewards: torch.Tensor

    @property
    def informative(self) -> bool:
        return bool(self.rewards.max() > self.rewards.min())


class ProblemStream:
    """The run's training problems in order, each rank its own interleaved share, drawn as
    (draw number, problem); the cursor is checkpointed so that a resumed run draws what a
    straight one would, and dynamic sampling may draw past the planned count (it wraps)."""

    def __init__(self, problems: list, rank: int, world: int, cursor: int = 0):
        self.mine, self.cursor = problems[rank::world], cursor

    def take(self, k: int) -> list[tuple[int, Problem | Example]]:
        out = [(d, self.mine[d % len(self.mine)]) for d in range(self.cursor, self.cursor + k)]
        self.cursor += k
        return out


def sample_groups(take: Callable[[int], list], roll: Callable[[list], list[Group]], n: int,
                  rounds: int) -> tuple[list[Group], list[Group], int]:
    """Dynamic sampling: n groups, replacing those with all-equal rewards by fresh prompts' groups
    for up to `rounds` rounds. Returns the kept groups, the first draw's (the unbiased view of
    the policy for the log) and how many were replaced."""
    kept: list[Group] = []
    first: list[Group] = []
    replaced = 0
    for round_ in range(rounds + 1):
        groups = roll(take(n - len(kept)))
        first = first or groups
        for g in groups:
            if g.informative or round_ == rounds:
                kept.append(g)
            else:
                replaced += 1
        if len(kept) == n:
            break
    return kept, first, replaced


def rollout_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=7).digest(), "little")


def loss_sample(n: int, k: int, seed: int) -> list[int]:
    """All n recorded steps, or k drawn without replacement: the loss is a mean over steps, so a
    uniform subset estimates it and its gradient without bias at k/n of the cost and memory."""
    if n <= k:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist())


def lr_factor(it: int, total: int, warmup: int) -> float:
    if it < warmup:
        return (it + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (it - warmup) / max(1, total - warmup)))


def mixture_log_prob(logp: torch.Tensor, expert: torch.Tensor, mix: float) -> torch.Tensor:
    """Expert steps: log(mix * p_policy + (1 - mix) * 1); policy steps: log p_policy."""
    if mix >= 1.0:
        return logp
    mixed = torch.logaddexp(logp + math.log(mix), torch.full_like(logp, math.log1p(-mix)))
    return torch.where(expert, mixed, logp)


def grpo_loss(net, steps: list[PolicyStep], advantages: torch.Tensor, clip: float,
              expert_mix: float = 1.0, policy_temperature: float = 1.0) -> torch.Tensor:
    """Clipped PPO objective over every recorded step (mean over steps)."""
    batch = PolicyStep.stack(steps)
    s_probs = unmask_probs(batch.logits(net), policy_temperature, ROLLOUT_KNOBS["beta"])
    logp = bernoulli_log_prob(s_probs, batch.action, batch.decide)
    old = mixture_log_prob(batch.logp, batch.expert, expert_mix)
    ratio = torch.exp(mixture_log_prob(logp, batch.expert, expert_mix) - old)
    clipped = ratio.clamp(1 - clip, 1 + clip)
    return -torch.minimum(ratio * advantages, clipped * advantages).mean()


def train(argv: list[str] | None = None, reward_fn: RewardFn | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    model_dir = args.model
    engine = engine_from_args(args, default_gen_length=args.gen_length)
    # the model folder's task and canvas unless the flags say otherwise, resolved before the
    # run's settings are recorded (so a resume compares numbers, not defaults)
    L, default_block = engine.default_canvas()
    args.gen_length = L
    args.block_length = block_length = resolve_block_length(args.block_length, L) or default_block
    args.task = args.task or (None if args.data else read_task_file(model_dir).get("task"))
    problems, val_problems, check = training_data(
        args, engine, args.iterations * args.prompts_per_step * world * (1 + args.resample_rounds))
    reward_fn = reward_fn or task_reward(args.alpha, check)
    features = tuple(f.strip() for f in args.features.split(","))
    meta = policy_meta(args, argv, model_dir, block_length, world)
    settings = run_settings(args)

    torch.manual_seed(args.seed)
    net = PolicyNet(features).to(args.device)
    if args.init is not None:
        net.load_state_dict(init_weights(args.init, net, meta["model"]["fingerprint"]))
    model = torch.nn.parallel.DistributedDataParallel(net) if distributed else net
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.99),
                            weight_decay=args.weight_decay)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "ckpt.pt", out / "log.jsonl"
    start = cursor = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True, map_location=args.device)
        check_resumable(state.get("settings", settings), settings, out)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        start = state["iteration"]
        cursor = state.get("cursor", start * args.prompts_per_step)
        if rank == 0 and log_path.exists():
            kept = [ln for ln in log_path.read_text().splitlines()
                    if json.loads(ln).get("iteration", 0) <= start]
            log_path.write_text("".join(ln + "\n" for ln in kept))
    STORE.add(Policy(TRAIN_POLICY, net, {"block_length": block_length}, record=True))
    STORE.add(Policy(TRAIN_EXPERT, net, {"block_length": block_length}, record=True,
                     expert_threshold=args.expert_threshold))
    STORE.add(Policy(TRAIN_VALIDATE, net, {"block_length": block_length}))
    P, G, E = args.prompts_per_step, args.group_size, args.expert_rollouts
    stream = ProblemStream(problems, rank, world, cursor)
    knobs = {**ROLLOUT_KNOBS, "policy_temperature": args.policy_temperature}

    def roll(draws: list[tuple[int, Problem | Example]]) -> list[Group]:
        """G + E rollouts of each drawn prompt in one batch; the last E are the expert's."""
        reqs = [GenerationRequest(
            engine.tokenizer(p.prompt)["input_ids"], "learned",
            {"policy": TRAIN_EXPERT if g >= G else TRAIN_POLICY, **knobs},
            gen_length=L, block_length=block_length,  # steps: one per position at most
            seed=rollout_seed(args.seed, rank, d, g))
            for d, p in draws for g in range(G + E)]
        results = engine.generate(reqs, max_batch_size=len(reqs))
        groups = []
        for k, (_, p) in enumerate(draws):
            rs = results[k * (G + E):(k + 1) * (G + E)]
            groups.append(Group(p, rs, [check(r.text, p.value) for r in rs],
                                torch.tensor([reward_fn(r, p, L) for r in rs])))
        return groups

    t_start = time.time()
    bar = tqdm(total=args.iterations, initial=start, desc="train-policy", disable=rank != 0)
    for it in range(start, args.iterations):
        t0 = time.time()
        net.eval()
        kept, first, replaced = sample_groups(stream.take, roll, P, args.resample_rounds)
        steps, step_adv = [], []
        for g in kept:
            if not g.informative:
                continue
            for r, a in zip(g.results, (g.rewards - g.rewards.mean()).tolist()):
                recs = recorded_steps(r.sampler_state)
                steps += recs
                step_adv += [a] * len(recs)
        net.train()
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor(it, args.iterations, args.warmup)
        step_adv_t = torch.tensor(step_adv, device=args.device)
        for pass_ in range(args.mu):
            if steps:
                pick = loss_sample(len(steps), args.loss_steps,
                                   rollout_seed(args.seed, it, rank, pass_))
                loss = grpo_loss(model, [steps[i] for i in pick], step_adv_t[pick], args.clip,
                                 args.expert_mix, args.policy_temperature)
            else:  # nothing to learn on this rank; a zero loss still joins the all-reduce
                loss = model(*dummy_inputs(net, args.device)).sum() * 0.0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
            opt.step()
        # the first draw's policy rollouts: what the policy does on the data, not on the
        # prompts dynamic sampling kept
        own = [(r, c) for g in first for r, c in zip(g.results[:G], g.correct[:G])]
        all_steps = [s for r, _ in own for s in recorded_steps(r.sampler_state)]
        record = {
            "iteration": it + 1,
            "reward": torch.cat([g.rewards[:G] for g in first]).mean().item(),
            "accuracy": sum(c for _, c in own) / len(own),
            "nfe": sum(r.nfe for r, _ in own) / len(own),
            "still_masked": torch.stack([s.mask_bits.float().sum() / s.valid.float().sum()
                                         for s in all_steps]).mean().item(),
            "unmask_prob": _mean_unmask_prob(net, all_steps),
            "zero_advantage": sum(not g.informative for g in first) / len(first),
            "replaced": replaced,
            "zero_advantage_final": sum(not g.informative for g in kept) / len(kept),
            "loss": loss.item(), "lr": opt.param_groups[0]["lr"],
            "step_s": round(time.time() - t0, 2),
        }
        if E:
            expert = [(r, c) for g in first for r, c in zip(g.results[G:], g.correct[G:])]
            record["expert_accuracy"] = sum(c for _, c in expert) / len(expert)
            record["expert_nfe"] = sum(r.nfe for r, _ in expert) / len(expert)
        if rank == 0:
            bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{record['accuracy']:.2f}",
                            nfe=f"{record['nfe']:.1f}")
            bar.update()
            if args.val_every and (it + 1) % args.val_every == 0:
                record.update(validate(engine, val_problems, check, L, block_length))
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if (it + 1) % args.ckpt_every == 0 or it + 1 == args.iterations:
                tmp = ckpt_path.with_suffix(".tmp")
                torch.save({"net": net.state_dict(), "opt": opt.state_dict(),
                            "iteration": it + 1, "cursor": stream.cursor,
                            "settings": settings}, tmp)
                tmp.replace(ckpt_path)
                meta["training"]["iterations_done"] = it + 1
                meta["training"]["wall_s"] = round(time.time() - t_start, 1)
                save_policy(net, out / "policy", meta)
                write_card(out / "policy", meta, record)
    bar.close()
    if distributed:
        checksum = torch.tensor([sum(p.double().sum().item() for p in net.parameters())])
        gathered = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(gathered, checksum.double())
        if rank == 0:
            with log_path.open("a") as f:
                f.write(json.dumps({"rank_checksums": [g.item() for g in gathered]}) + "\n")
        # Without this barrier rank 1 tears down its gloo pairs while rank 0 is still writing the
        # log, and one of them aborts at exit ("terminate called without an active exception"):
        # 3 of 15 runs on 2 loaded cores, 0 of 45 with it.
        dist.barrier()
        dist.destroy_process_group()
    STORE.remove(TRAIN_POLICY)
    STORE.remove(TRAIN_EXPERT)
    STORE.remove(TRAIN_VALIDATE)
    return out / "policy"


def run_settings(args: argparse.Namespace) -> dict[str, str]:
    """The flags a resumed run must share with its checkpoint (--iterations may grow; the
    rest only change speed, logging or naming)."""
    free = {"out", "name", "iterations", "threads", "device", "val_every", "val_n", "ckpt_every",
            "default"}
    return {k: str(v) for k, v in sorted(vars(args).items()) if k not in free}


def check_resumable(saved: dict[str, str], now: dict[str, str], out: Path) -> None:
    """Resuming silently with other flags would train a policy no command describes."""
    diff = [f"--{k.replace('_', '-')} {saved.get(k)} (now {v})" for k, v in now.items()
            if saved.get(k) != v]
    if diff:
        raise SystemExit(f"--out {out} holds a checkpoint of a run with other flags: "
                         f"{', '.join(diff)}; resume with the same flags or use a new --out")


def init_weights(policy_dir: Path, net: PolicyNet, fingerprint: str) -> dict:
    """--init: a policy with the architecture being trained. One trained for another dLLM is a
    starting point too (policies transfer roughly across models and canvas lengths, as the paper
    finds); every other check of its files still applies."""
    try:
        try:
            init = load_policy(policy_dir, fingerprint)
        except OtherModelError as e:
            print(f"--init: {e}; starting from its weights anyway", file=sys.stderr)
            init = load_policy(policy_dir, None)
    except PolicyError as e:
        raise SystemExit(f"--init: {e}") from None
    if init.net.architecture() != net.architecture():
        raise SystemExit(f"--init: {policy_dir} has architecture {init.net.architecture()}, "
                         f"not the one being trained ({net.architecture()}; check --features)")
    return init.net.state_dict()


def dummy_inputs(net: PolicyNet, device: str) -> tuple[torch.Tensor, ...]:
    ones = torch.ones(1, 1, dtype=torch.bool, device=device)
    feats = torch.zeros(1, 1, len(net.features), device=device)
    return feats, ones, torch.zeros(1, device=device), ones


def _mean_unmask_prob(net, steps: list[PolicyStep]) -> float:
    """Mean policy unmask probability over deciding positions (diagnostic)."""
    if not steps:
        return 0.0
    with torch.no_grad():
        sample = PolicyStep.stack(steps[:: max(1, len(steps) // 64)])
        return torch.sigmoid(sample.logits(net))[sample.decide].mean().item()


def training_data(args: argparse.Namespace, engine: Engine, n: int
                  ) -> tuple[list[Problem] | list[Example], list[Problem] | list[Example], Check]:
    """n training problems, the validation problems and how both are scored: the built-in
    task's splits, or --data's file. A bad file stops the run here, before any rollout, with a
    one-line `error: FILE:LINE: ...` and status 2."""
    val_n = args.val_n if args.val_every else 0
    try:
        if args.data is None:
            if args.checker is not None:
                raise DataError("--checker scores --data files; the built-in task keeps its own")
            # --task is one of the suites (argparse): an unknown name is the folder's
            suite = get_task(args.task or "arithmetic", Path(args.model) / TASK_FILE)
            return (suite.make_split("train", n), suite.make_split("validation", val_n),
                    suite.check_answer)
        if args.task is not None:
            raise DataError("--task names a built-in task; --data brings its own problems")
        checker = args.checker or DEFAULT_CHECKER
        examples = load_jsonl(args.data, engine.tokenizer, checker,
                              engine.cfg.max_sequence_length - args.gen_length)
    except (DataError, UnknownTask) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return repeat(examples, n, args.seed), examples[:val_n], make_checker(checker)


def validate(engine: Engine, problems: list[Problem] | list[Example], check: Check,
             gen_length: int, block_length: int) -> dict:
    n = len(problems)
    reqs = [GenerationRequest(engine.tokenizer(p.prompt)["input_ids"], "learned",
                              {"policy": TRAIN_VALIDATE}, gen_length=gen_length,
                              block_length=block_length) for p in problems]
    results = engine.generate(reqs)
    acc = sum(check(r.text, p.value) for r, p in zip(results, problems)) / n
    return {"val_accuracy": acc, "val_nfe": sum(r.nfe for r in results) / n}


def write_card(policy_dir: Path, meta: dict, last: dict) -> None:
    """The policy card: what it is for, how it was trained, what it cost."""
    t = meta["training"]
    mode = "full diffusion" if meta["block_length"] == meta["gen_length"] else \
        f"block length {meta['block_length']}"
    lines = [
        f"# Learned unmasking policy `{meta['name']}`", "",
        f"- dLLM: `{meta['model']['name']}` (fingerprint `{meta['model']['fingerprint']}`), "
        f"canvas {meta['gen_length']}, {mode}",
        f"- reward: correct x ((L - min(NFE, L) + 1) / L)^alpha, alpha = {meta['alpha']}",
        f"- trained: {t['iterations_done']} GRPO iterations of {t['prompts_per_step']} prompts x "
        f"{t['group_size']} rollouts x {t['world_size']} rank(s), lr {t['lr']}, mu {t['mu']}, "
        f"clip {t['clip']}, seed {t['seed']}",
        *([f"- expert steering: {t['expert_rollouts']} threshold-{t['expert_threshold']} "
           f"rollouts per group, mixture weight {t['expert_mix']}"]
          if t.get("expert_rollouts") else []),
        *([f"- initialised from the policy in `{t['init']}`, then trained as above"]
          if t.get("init") else []),
        f"- cost: {t['wall_s'] / 60:.1f} min wall time",
        f"- last iteration: reward {last['reward']:.3f}, accuracy {last['accuracy']:.3f}, "
        f"NFE {last['nfe']:.1f}",
        f"- command: `{t['command']}`", "",
    ]
    (policy_dir / "README.md").write_text("\n".join(lines))


def policy_meta(args, argv: list[str], model_dir: Path, block_length: int, world: int) -> dict:
    try:
        git = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], capture_output=True,
                             text=True, check=False)
        commit = git.stdout.strip() if git.returncode == 0 else None
    except OSError:
        commit = None
    return {
        "name": args.name or args.out.name,
        "model": {"name": Path(model_dir).name, "fingerprint": model_fingerprint(model_dir)},
        "gen_length": args.gen_length, "block_length": block_length, "alpha": args.alpha,
        "default": args.default,
        "training": {
            "command": "unmaskd train-policy " + " ".join(argv),
            "data": f"{args.data} (checker {args.checker or DEFAULT_CHECKER})" if args.data
            else f"tasks.{args.task or 'arithmetic'} train split", "iterations": args.iterations,
            "group_size": args.group_size, "prompts_per_step": args.prompts_per_step,
            "world_size": world, "lr": args.lr, "mu": args.mu, "clip": args.clip,
            "resample_rounds": args.resample_rounds,
            "policy_temperature": args.policy_temperature,
            "expert_rollouts": args.expert_rollouts, "expert_threshold": args.expert_threshold,
            "expert_mix": args.expert_mix,
            "init": str(args.init) if args.init is not None else None,
            "seed": args.seed, "commit": commit,
        },
    }


def main(argv: list[str] | None = None) -> int:
    train(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
