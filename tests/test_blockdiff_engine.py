"""The engine decodes SDAR and LLaDA2 checkpoints as the families' own generate functions do:
the same tokens and the same number of denoising forwards as tests/blockdiff_reference.py, at
temperature 0, with the exact block cache and with the prefix recomputed (`--cache none`),
alone and in one batch, and through the CLI.

Where a decode stops at an EOS, the reference leaves the blocks it never decoded as masks and the
engine fills them with EOS (as it does for every model): positions after the stop are compared as
"EOS or mask"."""

import json

import pytest
from blockdiff_reference import cases, prompts, reference_decode
from unmaskd.cli.main import main
from unmaskd.engine.loop import Engine
from unmaskd.engine.sequence import GenerationRequest, InvalidRequest


@pytest.fixture(params=["sdar", "llada2"])
def model_dir(request, tiny_sdar_dir, tiny_llada2_dir):
    return {"sdar": tiny_sdar_dir, "llada2": tiny_llada2_dir}[request.param]


def request_for(engine: Engine, ids: list[int], case: dict) -> GenerationRequest:
    """The case as an unmaskd request: the families count steps per block, as it does."""
    params = {} if case["sampler"] != "threshold" else {"threshold": case["threshold"]}
    return GenerationRequest(ids, case["sampler"], params, gen_length=case["gen_length"],
                             block_length=case["block_length"],
                             steps_per_block=case["steps_per_block"],
                             stop_at_eos=case["stop_at_eos"])


def same_decode(got: list[int], want: list[int], engine: Engine) -> bool:
    if len(got) != len(want):
        return False
    return all(g == w or (w == engine.mask_id and g == engine.eos_id) for g, w in zip(got, want))


@pytest.mark.parametrize("cache", ["dual", "none"])
def test_engine_matches_the_family_decode(model_dir, cache):
    engine = Engine.from_dir(model_dir, cache=cache)
    wrong, reqs, wants = [], [], []
    for ids in prompts(model_dir):
        for case in cases():
            want, nfe, _ = reference_decode(model_dir, ids, **case)
            req = request_for(engine, ids, case)
            (got,) = engine.generate([req])
            if not same_decode(got.token_ids, want, engine) or got.nfe != nfe:
                wrong.append((len(ids), case, got.nfe, nfe))
            reqs.append(req)
            wants.append((want, nfe))
    assert not wrong, wrong[:5]
    # All of them in one batch: rows at different blocks, offsets and prompt lengths.
    batched = engine.generate(reqs)
    assert all(same_decode(r.token_ids, w, engine) and r.nfe == n
               for r, (w, n) in zip(batched, wants))


def test_a_fixed_steps_is_valid_for_every_prompt_length(tiny_sdar_dir):
    """Aligned blocks make the canvas's block count depend on the prompt (32 positions in
    blocks of 4 span 8 blocks or 9); `steps` is split over the blocks the asked canvas spans,
    so a client's fixed `steps` never passes for one prompt length and fails for another, and
    the extra block gets the same budget."""
    engine = Engine.from_dir(tiny_sdar_dir)
    ids = prompts(tiny_sdar_dir)[0]
    blocks_seen = set()
    for n in range(1, 9):
        vr = engine.validate(GenerationRequest(ids[:n], gen_length=32, block_length=4,
                                               steps=16))
        assert vr.steps_per_block == 2
        blocks_seen.add(vr.n_blocks)
        assert engine.validate(GenerationRequest(
            ids[:n], gen_length=32, block_length=4, steps_per_block=2)).steps == vr.steps
    assert blocks_seen == {8, 9}
    for steps in (12, 40):  # not a multiple of 8 blocks; more than one per position
        for n in (3, 4):
            with pytest.raises(InvalidRequest) as info:
                engine.validate(GenerationRequest(ids[:n], gen_length=32, block_length=4,
                                                  steps=steps))
            assert info.value.field == "steps"


def test_generate_cli_reproduces_the_family_decode(tiny_sdar_dir, capsys):
    ids = prompts(tiny_sdar_dir)[0]
    want, nfe, _ = reference_decode(tiny_sdar_dir, ids, gen_length=16, block_length=4,
                                    steps_per_block=4, sampler="threshold", threshold=0.6)
    text = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    assert main(["generate", "--model", str(tiny_sdar_dir), "--prompt", text, "--sampler",
                 "threshold", "--param", "threshold=0.6", "--gen-length", "16",
                 "--block-length", "4", "--temperature", "0", "--json", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["token_ids"] == want and out["nfe"] == nfe


def test_family_defaults_and_stop_tokens(tiny_sdar_dir, tiny_llada2_dir, tmp_path):
    import shutil

    llada2 = Engine.from_dir(tiny_llada2_dir)
    ids = prompts(tiny_llada2_dir)[0]
    vr = llada2.validate(GenerationRequest(ids, "threshold"))
    assert (vr.params.threshold, vr.block_length) == (0.95, 32)  # LLaDA2's generate defaults
    assert llada2.validate(GenerationRequest(ids, "threshold", {"threshold": 0.5})
                           ).params.threshold == 0.5
    # generation_config.json's eos list adds stop tokens: the answer ends at the first of them.
    folder = tmp_path / "sdar"
    shutil.copytree(tiny_sdar_dir, folder)
    plain = Engine.from_dir(folder)
    ids = prompts(folder)[0]
    (r,) = plain.generate([GenerationRequest(ids, gen_length=16, block_length=4)])
    stop = next(t for t in r.token_ids if t != plain.eos_id)  # some token it does produce
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [stop]}))
    stopping = Engine.from_dir(folder)
    assert stopping.stop_ids == sorted({plain.eos_id, stop})
    (s,) = stopping.generate([GenerationRequest(ids, gen_length=16, block_length=4,
                                                stop_at_eos=True)])
    first = r.token_ids.index(stop)
    assert s.token_ids[:first + 1] == r.token_ids[:first + 1]
    assert s.text == plain.tokenizer.decode(r.token_ids[:first], skip_special_tokens=False)
    assert s.finish_reason == "stop" and s.nfe <= r.nfe


def test_served_over_http(model_dir):
    """/generate (one SSE event per denoising step) and /v1/chat/completions on both families,
    with their chat templates; in-process, the app around an engine as `serve` builds it."""
    from fastapi.testclient import TestClient
    from unmaskd.server.app import create_app
    from unmaskd.server.settings import ServerSettings

    engine = Engine.from_dir(model_dir, cache="dual")
    with TestClient(create_app(ServerSettings(model=model_dir), engine)) as client:
        r = client.post("/generate", json={"prompt": "ab", "max_new_tokens": 8,
                                           "sampler": "threshold"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["nfe"] >= 1 and len(body["token_ids"]) >= 8
        r = client.post("/generate", json={"prompt": "ab", "max_new_tokens": 8,
                                           "stream": True, "sampler": "topk_confidence"})
        events = [json.loads(line[5:]) for line in r.text.splitlines()
                  if line.startswith("data:") and not line.endswith("[DONE]")]
        steps = [e for e in events if "committed" in e]
        assert steps and [e["step"] for e in steps] == list(range(1, len(steps) + 1))
        assert events[-1]["nfe"] == len(steps)
        r = client.post("/v1/chat/completions", json={
            "model": model_dir.name, "max_tokens": 8,
            "messages": [{"role": "user", "content": "What is 2+3?"}]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
        # One step per block whatever the prompt: "ab" leaves room in its first block
        # (3 blocks of 4 for 8 tokens), "abcd" fills it (2 blocks).
        for prompt, blocks in (("ab", 3), ("abcd", 2)):
            r = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 8,
                                               "block_length": 4, "steps_per_block": 1,
                                               "stop_at_eos": False})
            assert r.status_code == 200 and r.json()["nfe"] == blocks, r.text
            r = client.post("/v1/completions", json={
                "model": model_dir.name, "prompt": prompt, "max_tokens": 8, "block_length": 4,
                "steps": 4, "stop_at_eos": False})
            assert r.status_code == 200, r.text
        r = client.post("/generate", json={"prompt": "ab", "steps": 4, "steps_per_block": 1})
        assert r.status_code == 422 and r.json()["field"] == "steps_per_block", r.text


def test_a_policy_trains_and_serves_on_block_diffusion(tiny_sdar_dir, tmp_path):
    """`train-policy --model SDAR_DIR` rolls out through the block-diffusion engine (with its
    cache) and the policy it writes decodes with `learned`."""
    from unmaskd.engine.model_args import load_policies
    from unmaskd.sampler_plugins.policy_store import STORE
    from unmaskd.training.policy_trainer import train

    train(["--model", str(tiny_sdar_dir), "--out", str(tmp_path / "run"), "--gen-length", "16",
           "--block-length", "4", "--iterations", "1", "--prompts-per-step", "2",
           "--group-size", "2", "--cache", "dual"])
    (name,) = load_policies(tmp_path / "run", tiny_sdar_dir)
    try:
        engine = Engine.from_dir(tiny_sdar_dir, cache="dual")
        (r,) = engine.generate([GenerationRequest(prompts(tiny_sdar_dir)[1], "learned",
                                                  {"policy": name}, gen_length=8)])
        assert r.nfe >= 1 and engine.mask_id not in r.token_ids
    finally:
        STORE.remove(name)
