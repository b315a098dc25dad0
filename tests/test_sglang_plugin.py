"""unmaskd's algorithms inside SGLang's own dLLM loop, with the real sglang 0.5.23 package on CPU.

SGLang's `load_plugins()` finds the entry point; SGLang's `DllmAlgorithm.run` (the base class's
synchronous loop: forward, step, until every block is done) decodes the tiny random SDAR and
LLaDA2 checkpoints through a model runner whose forward is unmaskd's own backend for the folder,
and the tokens and the denoising forwards are those of unmaskd's engine (what `unmaskd generate`
runs) on the same folder, for threshold, top-k, EB and the learned policy, alone and with
several requests in one batch. Then the refusals: a bad YAML field, another SGLang version, a
full-diffusion policy, a policy trained for another dLLM.

The runner plays SGLang's model runner only: it returns the logits of each request's current
block (unmaskd's block-causal forward over the request's committed tokens and that block, the
prefix recomputed where SGLang reads it from its KV cache). Driving blocks (prompt + output +
B masks, aligned to position 0, as SGLang's ReqDllmMixin builds them) stands in for SGLang's
scheduler, which needs a GPU server.

Runs in .venv-sglang (`make sglang-env`; `make test` builds it and runs this file there). In an
environment without sglang it is skipped.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("sglang.srt.dllm.algorithm.base", reason=(
    "sglang is not installed in this environment: `make test` runs this file in .venv-sglang"))

from blockdiff_reference import prompts  # noqa: E402
from sglang.srt import runtime_context  # noqa: E402
from sglang.srt.dllm import algorithm as algorithm_table  # noqa: E402
from sglang.srt.dllm.algorithm import get_algorithm_cls  # noqa: E402
from sglang.srt.dllm.config import DllmConfig  # noqa: E402
from sglang.srt.layers.logits_processor import LogitsProcessorOutput  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode  # noqa: E402
from sglang.srt.model_executor.model_runner import ModelRunnerOutput  # noqa: E402
from sglang.srt.plugins import load_plugins  # noqa: E402
from unmaskd.dllm.checkpoint import load_dllm  # noqa: E402
from unmaskd.engine.loop import Engine  # noqa: E402
from unmaskd.engine.sequence import GenerationRequest  # noqa: E402

POLICIES = Path(__file__).parent.parent / "dllm" / "embedded" / "policies"
BLOCK_POLICY = POLICIES / "block12-a03"  # trained for the embedded model, blocks of 12
FULL_POLICY = POLICIES / "full48-a1"  # trained for full diffusion


class BackendRunner:
    """SGLang's ModelRunner as DllmAlgorithm.run calls it: forward(forward_batch,
    pp_proxy_tensors) -> ModelRunnerOutput whose logits_output.full_logits is [n * B, V]."""

    def __init__(self, model, block_size: int, mask_id: int):
        self.model, self.block_size, self.mask_id = model, block_size, mask_id
        self.context: dict[str, list[int]] = {}  # rid -> its tokens before the current block
        self.denoising = Counter()  # rid -> forwards whose block still held a mask
        self.forwards = 0

    @torch.no_grad()
    def forward(self, forward_batch: ForwardBatch, pp_proxy_tensors=None) -> ModelRunnerOutput:
        B, n = self.block_size, forward_batch.batch_size
        blocks = forward_batch.input_ids.view(n, B)
        logits = []
        for rid, block in zip(forward_batch.rids, blocks):
            ids = torch.tensor(self.context[rid] + block.tolist())[None]
            logits.append(self.model(ids)[0, -B:])
            self.denoising[rid] += int((block == self.mask_id).any())
        self.forwards += 1
        return ModelRunnerOutput(
            logits_output=LogitsProcessorOutput(next_token_logits=None,
                                                full_logits=torch.cat(logits)),
            can_run_graph=False)


def sglang_decode(algo, runner: BackendRunner, requests: dict[str, tuple[list[int], int]],
                  explicit_prompt_mask: bool = False) -> dict[str, list[int]]:
    """Each request (rid -> (prompt, max_new_tokens)) block by block through algo.run, all
    unfinished ones in one batch per round, as SGLang's scheduler sends them. In SGLang's
    first-done-first-out mode (`--dllm-fdfo`) a round is one step: an unfinished block comes
    back as the next round's block, with its step state, until its step reports it done."""
    B, mask_id = algo.block_size, algo.mask_id
    out = {rid: [] for rid in requests}
    pending: dict[str, tuple[list[int], object]] = {}  # fdfo: rid -> (its block, its state)
    active = list(requests)
    while active:
        ids, starts = [], []
        for rid in active:
            seq = requests[rid][0] + out[rid]
            start = len(seq) // B * B
            runner.context[rid] = seq[:start]
            block = seq[start:] + [mask_id] * (start + B - len(seq))
            ids += pending[rid][0] if rid in pending else block
            starts.append(start)
        n = len(active)
        positions = torch.tensor([s + j for s in starts for j in range(B)])
        prompt_lens = torch.tensor([len(requests[rid][0]) for rid in active])
        batch = ForwardBatch(
            forward_mode=ForwardMode.DLLM_EXTEND, batch_size=n, input_ids=torch.tensor(ids),
            req_pool_indices=torch.arange(n), seq_lens=torch.tensor(starts) + B,
            out_cache_loc=torch.zeros(n * B, dtype=torch.long), seq_lens_sum=sum(starts) + n * B,
            positions=positions, rids=list(active),
            dllm_prompt_mask=(positions.view(n, B) < prompt_lens[:, None]
                              if explicit_prompt_mask else None))
        states = [pending[rid][1] if rid in pending else None for rid in active]
        _, new_ids, accepted, states, _ = algo.run(runner, batch, states)
        for i, (rid, new) in enumerate(zip(active, new_ids)):
            if accepted is None:  # the synchronous loop: the block's answer positions
                out[rid] += new.tolist()
            elif accepted[i] == B:  # fdfo: the whole block, its answer positions kept
                pending.pop(rid, None)
                out[rid] += new[len(requests[rid][0]) - starts[i]:] if (
                    starts[i] < len(requests[rid][0])) else new
            else:
                pending[rid] = (new, states[i])
        active = [rid for rid in active if len(out[rid]) < requests[rid][1]]
    return out


@pytest.fixture(scope="module")
def plugins_loaded():
    """SGLang's own plug-in loader, as its server and scheduler processes call it."""
    load_plugins()
    return algorithm_table.algo_name_to_cls


@pytest.fixture
def served(monkeypatch):
    """Publish a served model folder as SGLang's scheduler process does (its server args)."""
    def serve(model_dir: Path):
        monkeypatch.setattr(runtime_context, "get_server_args",
                            lambda: SimpleNamespace(model_path=str(model_dir)))
    return serve


def build(name: str, config: dict, block_size: int, mask_id: int, fdfo: bool = False):
    cls = get_algorithm_cls(name)
    return cls(DllmConfig(algorithm=name, algorithm_config=config, block_size=block_size,
                          mask_id=mask_id, max_running_requests=8,
                          first_done_first_out_mode=fdfo))


def test_load_plugins_finds_the_entry_point(plugins_loaded):
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "unmaskd"]
    assert ep.value == "unmaskd.engine.sglang_plugin:register"
    assert get_algorithm_cls("Unmaskd").__name__ == "Unmaskd"
    assert get_algorithm_cls("UnmaskdLearned").__name__ == "UnmaskdLearned"
    assert get_algorithm_cls("Unmaskd").supported_architectures == (
        "LLaDA2MoeModelLM", "SDARForCausalLM", "SDARMoeForCausalLM")


# (algorithm, YAML, the engine's sampler and params, steps per block or None for B)
CASES = {
    "threshold": ("Unmaskd", {"sampler": "threshold", "threshold": 0.6},
                  "threshold", {"threshold": 0.6}, None),
    "topk": ("Unmaskd", {"sampler": "topk_confidence"}, "topk_confidence", {}, None),
    "topk-2-steps": ("Unmaskd", {"sampler": "topk_confidence", "steps_per_block": 2},
                     "topk_confidence", {}, 2),
    "eb": ("Unmaskd", {"sampler": "eb", "gamma": 0.5}, "eb", {"gamma": 0.5}, None),
    "learned": ("UnmaskdLearned", {"policy": str(BLOCK_POLICY), "allow_other_model": True},
                "learned", {"policy": BLOCK_POLICY.name, "allow_other_model": True}, None),
}


@pytest.mark.parametrize("family", ["sdar", "llada2"])
@pytest.mark.parametrize("case", list(CASES))
def test_sglang_loop_decodes_as_the_engine(plugins_loaded, served, family, case,
                                           tiny_sdar_dir, tiny_llada2_dir):
    model_dir = {"sdar": tiny_sdar_dir, "llada2": tiny_llada2_dir}[family]
    served(model_dir)
    name, config, sampler, params, steps_per_block = CASES[case]
    model, _ = load_dllm(model_dir)
    B, mask_id = model.block_size, model.config.mask_token_id
    engine = Engine.from_dir(model_dir)
    build(name, config, B, mask_id)  # loads the policy into the store the engine reads too
    # The learned policy's view spans its training canvas (48); the others get two blocks.
    gen_length = 48 if name == "UnmaskdLearned" else 2 * B - 3
    wanted = {}
    for i, ids in enumerate(prompts(model_dir)):
        probe = engine.validate(GenerationRequest(ids, gen_length=gen_length, block_length=B))
        n_blocks = (probe.block_offset + probe.gen_length) // B
        (res,) = engine.generate([GenerationRequest(
            ids, sampler, params, gen_length=gen_length, block_length=B,
            steps_per_block=steps_per_block or B)])
        wanted[f"req{i}"] = (ids, res, n_blocks)

    def check(got: dict, runner: BackendRunner) -> None:
        for rid in got:
            res = wanted[rid][1]
            assert got[rid][:res.gen_length] == res.token_ids, (rid, got[rid], res.token_ids)
            assert runner.denoising[rid] == res.nfe, rid

    # Alone: each request in its own runs; SGLang spends one more forward per block (it writes
    # the finished block's keys/values) than the engine, which rides it in the next block's.
    for rid, (ids, res, n_blocks) in wanted.items():
        algo = build(name, config, B, mask_id)
        runner = BackendRunner(model, B, mask_id)
        check(sglang_decode(algo, runner, {rid: (ids, res.gen_length)}), runner)
        assert runner.forwards == res.nfe + n_blocks
    # Together in one batch (ragged prompts: rows at different blocks and offsets), once with
    # SGLang's explicit prompt mask (sent when a prompt holds a literal mask id), once in its
    # first-done-first-out mode (a block leaves the batch as soon as it is done).
    for explicit, fdfo in ((False, False), (True, False), (False, True)):
        algo = build(name, config, B, mask_id, fdfo)
        runner = BackendRunner(model, B, mask_id)
        batch = {rid: (ids, res.gen_length) for rid, (ids, res, _) in wanted.items()}
        check(sglang_decode(algo, runner, batch, explicit_prompt_mask=explicit), runner)


def test_decisions_are_the_samplers(plugins_loaded, tiny_sdar_dir):
    """The check above can fail: a different rule (top-k against threshold) decodes otherwise."""
    model, _ = load_dllm(tiny_sdar_dir)
    B, mask_id = model.block_size, model.config.mask_token_id
    ids = prompts(tiny_sdar_dir)[0]
    engine = Engine.from_dir(tiny_sdar_dir)
    (res,) = engine.generate([GenerationRequest(ids, "threshold", {"threshold": 0.3},
                                                gen_length=16, block_length=B)])
    runner = BackendRunner(model, B, mask_id)
    algo = build("Unmaskd", {"sampler": "topk_confidence"}, B, mask_id)
    got = sglang_decode(algo, runner, {"r": (ids, res.gen_length)})
    assert (got["r"][:res.gen_length], runner.denoising["r"]) != (res.token_ids, res.nfe)


def configure(name: str, model_dir: Path, config: dict, tmp_path: Path) -> None:
    """SGLang's launch-time hook for the algorithm (handle_dllm_inference calls it)."""
    import yaml

    path = tmp_path / "algo.yaml"
    path.write_text(yaml.safe_dump(config))
    get_algorithm_cls(name).configure_server_args(
        SimpleNamespace(model_path=str(model_dir), dllm_algorithm_config=str(path)))


@pytest.mark.parametrize("name, config, field", [
    ("Unmaskd", {"sampler": "threshold", "threshold": 2}, "threshold"),
    ("Unmaskd", {"sampler": "threshold", "treshold": 0.9}, "treshold"),
    ("Unmaskd", {"sampler": "nope"}, "sampler"),
    ("Unmaskd", {"threshold": 0.9}, "sampler"),
    ("Unmaskd", {"sampler": "topk_confidence", "steps_per_block": 5}, "steps_per_block"),
    ("UnmaskdLearned", {"policy": str(BLOCK_POLICY), "allow_other_model": True, "beta": -1},
     "beta"),
    ("UnmaskdLearned", {"policy": str(BLOCK_POLICY), "allow_other_model": True,
                        "gen_length": "long"}, "gen_length"),
    ("UnmaskdLearned", {"policy": str(BLOCK_POLICY), "temperature": 0.5}, "temperature"),
])
def test_bad_yaml_stops_the_launch_with_one_line(plugins_loaded, tiny_sdar_dir, tmp_path,
                                                 name, config, field):
    with pytest.raises(SystemExit) as stop:
        configure(name, tiny_sdar_dir, config, tmp_path)
    message = str(stop.value.code)  # what Python prints on exit: this line, no traceback
    assert message.startswith("error: ") and "\n" not in message
    assert f"field {field!r}" in message, message


def test_good_yaml_passes_the_launch(plugins_loaded, tiny_sdar_dir, tmp_path):
    configure("Unmaskd", tiny_sdar_dir, {"sampler": "eb", "gamma": 0.2, "block_size": 4},
              tmp_path)
    configure("UnmaskdLearned", tiny_sdar_dir, {"policy": str(BLOCK_POLICY),
                                                "allow_other_model": True, "beta": 2.0},
              tmp_path)


def test_policy_for_another_model_is_refused_with_the_reason(plugins_loaded, tiny_sdar_dir,
                                                             tmp_path):
    with pytest.raises(SystemExit) as stop:
        configure("UnmaskdLearned", tiny_sdar_dir, {"policy": str(BLOCK_POLICY)}, tmp_path)
    message = str(stop.value.code)
    assert "field 'policy'" in message and "trained for dLLM 'embedded'" in message
    assert "allow_other_model" in message


def test_full_diffusion_policy_is_refused_with_the_reason(plugins_loaded, tiny_sdar_dir,
                                                          tmp_path, served):
    config = {"policy": str(FULL_POLICY), "allow_other_model": True}
    with pytest.raises(SystemExit) as stop:
        configure("UnmaskdLearned", tiny_sdar_dir, config, tmp_path)
    assert "field 'policy'" in str(stop.value.code)
    assert "full diffusion" in str(stop.value.code)
    served(tiny_sdar_dir)  # and in the scheduler process, where SGLang builds the algorithm
    with pytest.raises(ValueError, match="full diffusion"):
        build("UnmaskdLearned", config, 4, 5)


def test_another_sglang_version_is_refused(plugins_loaded, monkeypatch, tiny_sdar_dir, tmp_path):
    import unmaskd.engine.sglang_plugin as plugin

    monkeypatch.setattr(plugin, "installed_sglang_version", lambda: "0.5.22")
    for name in ("Unmaskd", "UnmaskdLearned"):
        monkeypatch.setitem(algorithm_table.algo_name_to_cls, name, None)  # restored after
    plugin.register()
    for name in ("Unmaskd", "UnmaskdLearned"):
        with pytest.raises(RuntimeError, match=r"sglang==0\.5\.23.*sglang 0\.5\.22"):
            configure(name, tiny_sdar_dir, {"sampler": "threshold"}, tmp_path)
        with pytest.raises(RuntimeError, match=r"sglang==0\.5\.23"):
            build(name, {"sampler": "threshold"}, 4, 5)
