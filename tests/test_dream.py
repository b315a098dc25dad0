"""Dream / DiffuCoder checkpoints (`model_type` "Dream"): loaded from Dream's own folder format,
decoded with Dream's tokens at temperature 0, served, and used with every other part of unmaskd.

The checkpoint is tiny and random, built here as Dream's release lays its folder out: config.json
with `model_type` "Dream" and `auto_map` to remote code, sharded bf16 safetensors under Dream's
weight names with an index, tokenizer.json with `<|mask|>`, and a tokenizer_config.json naming
`DreamTokenizer` with a Qwen2-style chat template. The folder's Python files would leave a mark
if anything executed them. tests/dream_reference.py is Dream's `diffusion_generate`, written
from the published algorithm with its own forward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from dream_reference import ReferenceDream, cached_decode, diffusion_generate
from safetensors.torch import save_file
from unmaskd.engine.loop import Engine, GenerationRequest

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Would run if anything imported the folder's code; the tests check that nothing did.
REMOTE_CODE = "import pathlib\npathlib.Path(__file__).with_name('EXECUTED').touch()\n"
PROMPTS = ("Question: Ava has 3 apples. She buys 4 more apples. How many apples does Ava have?"
           "\nAnswer:", "7 + 8 =")
ALGS = {"maskgit_plus": "maskgit_plus", "margin": "topk_margin", "entropy": "entropy"}
SHAPES = {8: (1, 2, 3, 4, 8), 12: (2, 3, 4, 6, 12), 16: (2, 4, 5, 8, 16)}  # L: steps


def dream_tokenizer(out: Path) -> dict[str, int]:
    """tokenizer.json (byte-level BPE, digits split as Qwen2's) + tokenizer_config.json as
    Dream's release writes it. Returns the special tokens' ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from unmaskd.tasks.arithmetic import make_split

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((p.prompt + p.answer for p in make_split("train", 300)), trainer)
    tok.add_special_tokens(SPECIAL)
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL}
    config = {
        "tokenizer_class": "DreamTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>", "model_max_length": 131072, "errors": "replace",
        "split_special_tokens": False, "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
                                 for t, i in ids.items()},
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return ids


def build_dream(out: Path, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                seed: int = 0, **config) -> Path:
    """A random Dream-format checkpoint (two shards + index, bf16, Dream's weight names)."""
    out.mkdir(parents=True)
    ids = dream_tokenizer(out)
    vocab = (max(ids.values()) + 1 + 63) // 64 * 64  # padded past the tokenizer, as Dream's
    raw = {
        "architectures": ["DreamModel"], "model_type": "Dream",
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                     "AutoModel": "modeling_dream.DreamModel"},
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "hidden_act": "silu", "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": None,
        "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28,
        "tie_word_embeddings": False, "initializer_range": 0.02, "attention_dropout": 0.0,
        "use_cache": False, "torch_dtype": "bfloat16", "transformers_version": "4.46.2",
        "mask_token_id": ids["<|mask|>"], "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"], **config,
    }
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    for name in ("configuration_dream.py", "modeling_dream.py", "tokenization_dream.py",
                 "generation_utils.py"):
        (out / name).write_text(REMOTE_CODE)
    gen = torch.Generator().manual_seed(seed)
    kv = hidden // heads * kv_heads

    def rand(*shape: int, std: float = 0.5, mean: float = 0.0) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * std + mean).to(torch.bfloat16)

    shards: list[dict[str, torch.Tensor]] = [{"model.embed_tokens.weight": rand(vocab, hidden)}]
    for i in range(layers):
        p = f"model.layers.{i}."
        shards.append({
            p + "input_layernorm.weight": rand(hidden, std=0.1, mean=1.0),
            p + "self_attn.q_proj.weight": rand(hidden, hidden), p + "self_attn.q_proj.bias":
                rand(hidden, std=0.1), p + "self_attn.k_proj.weight": rand(kv, hidden),
            p + "self_attn.k_proj.bias": rand(kv, std=0.1),
            p + "self_attn.v_proj.weight": rand(kv, hidden),
            p + "self_attn.v_proj.bias": rand(kv, std=0.1),
            p + "self_attn.o_proj.weight": rand(hidden, hidden),
            p + "post_attention_layernorm.weight": rand(hidden, std=0.1, mean=1.0),
            p + "mlp.gate_proj.weight": rand(2 * hidden, hidden),
            p + "mlp.up_proj.weight": rand(2 * hidden, hidden),
            p + "mlp.down_proj.weight": rand(hidden, 2 * hidden)})
    shards.append({"model.norm.weight": rand(hidden, std=0.1, mean=1.0),
                   "lm_head.weight": rand(vocab, hidden)})
    halves = [{k: v for s in shards[:1 + layers // 2] for k, v in s.items()},
              {k: v for s in shards[1 + layers // 2:] for k, v in s.items()}]
    weight_map = {}
    for n, part in enumerate(halves, 1):
        name = f"model-{n:05d}-of-00002.safetensors"
        save_file(part, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2))
    return out


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory) -> Path:
    return build_dream(tmp_path_factory.mktemp("dream") / "Dream-tiny")


@pytest.fixture(scope="module")
def engine(dream_dir) -> Engine:
    return Engine.from_dir(dream_dir)


@pytest.fixture(scope="module")
def prompt_ids(engine) -> dict[str, list[int]]:
    return {p: engine.tokenizer(p)["input_ids"] for p in PROMPTS}


@dataclass(frozen=True)
class Case:
    prompt: str
    gen_length: int
    steps: int
    sampler: str

    def __str__(self) -> str:
        return f"{self.sampler} L={self.gen_length} steps={self.steps} prompt={self.prompt[:8]!r}"

    def request(self, prompt_ids: list[int]) -> GenerationRequest:
        return GenerationRequest(prompt_ids=prompt_ids, sampler=self.sampler,
                                 gen_length=self.gen_length, steps=self.steps)


CASES = [Case(p, L, s, sampler) for p in PROMPTS for L, steps in SHAPES.items()
         for s in steps for sampler in ALGS]


@pytest.fixture(scope="module")
def reference(dream_dir, prompt_ids):
    """reference(case, at_least_one) -> (canvas, nfe, per-step counts), each computed once."""
    model = ReferenceDream(dream_dir)
    memo: dict = {}

    def run(case: Case, at_least_one: bool = False):
        key = (case, at_least_one)
        if key not in memo:
            memo[key] = diffusion_generate(model, prompt_ids[case.prompt], case.gen_length,
                                           case.steps, ALGS[case.sampler],
                                           at_least_one=at_least_one)
        return memo[key]

    run.model = model
    return run


# ---- the backend --------------------------------------------------------------------------
def test_forward_matches_the_reference_and_no_folder_code_runs(dream_dir, engine, prompt_ids,
                                                                reference):
    ids = prompt_ids[PROMPTS[0]] + [engine.mask_id] * 8
    with torch.no_grad():
        got = engine.model(torch.tensor([ids]))[0]
    torch.testing.assert_close(got, reference.model.forward(ids)[0], atol=1e-4, rtol=1e-4)
    assert engine.model.logit_offset == 1
    assert not (dream_dir / "EXECUTED").exists()


def test_left_padding_leaves_a_row_unchanged(engine, prompt_ids):
    """Positions count real tokens (Dream: attention_mask.cumsum - 1), padding is no key."""
    ids = prompt_ids[PROMPTS[1]] + [engine.mask_id] * 4
    pad = 5
    padded = torch.tensor([[engine.eos_id] * pad + ids])
    keep = torch.tensor([[False] * pad + [True] * len(ids)])
    with torch.no_grad():
        alone = engine.model(torch.tensor([ids]))[0]
        batched = engine.model(padded, keep)[0, pad:]
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)


def test_tokenizer_is_the_folders_with_its_chat_template(dream_dir, engine):
    tok = engine.tokenizer
    assert tok.mask_token_id == engine.mask_id and tok.eos_token_id == engine.eos_id
    text = tok.apply_chat_template([{"role": "user", "content": "7 + 8 ="}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n7 + 8 =<|im_end|>\n<|im_start|>assistant\n")
    assert not (dream_dir / "EXECUTED").exists()


def test_tokenizer_from_vocab_and_merges(dream_dir, tmp_path):
    """A folder with DreamTokenizer's vocab.json + merges.txt and no tokenizer.json loads with
    transformers' Qwen2 tokenizer (DreamTokenizer's algorithm), never the folder's class."""
    from tokenizers import Tokenizer
    from unmaskd.dllm.dream import load_tokenizer

    folder = tmp_path / "slow"
    folder.mkdir()
    Tokenizer.from_file(str(dream_dir / "tokenizer.json")).model.save(str(folder))
    for name in ("tokenizer_config.json", "tokenization_dream.py"):
        (folder / name).write_bytes((dream_dir / name).read_bytes())
    tok = load_tokenizer(folder)
    assert type(tok).__name__ == "Qwen2Tokenizer"
    config = json.loads((dream_dir / "config.json").read_text())
    assert tok.mask_token_id == config["mask_token_id"]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert tok.decode(tok(text)["input_ids"]) == text
    assert not (folder / "EXECUTED").exists()


@pytest.mark.parametrize(("field", "value"), [
    ("rope_scaling", {"type": "linear", "factor": 2.0}), ("use_sliding_window", True),
    ("hidden_act", "gelu"), ("tie_word_embeddings", True), ("head_dim", 8),
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0}),
])
def test_unsupported_config_is_refused_naming_the_field(dream_dir, tmp_path, capsys, field,
                                                        value):
    from unmaskd.cli.main import main

    folder = tmp_path / "model"
    folder.mkdir()
    for f in dream_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    raw = {**json.loads((dream_dir / "config.json").read_text()), field: value}
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(folder), "--prompt", "7 + 8 ="])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"config field {field}=" in err, err


def test_training_only_fields_are_accepted():
    from unmaskd.dllm.dream import DreamConfig

    cfg = DreamConfig.from_dict({
        "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "mask_token_id": 3, "eos_token_id": 0,
        "sliding_window": 4096, "max_window_layers": 28, "use_sliding_window": False,
        "initializer_range": 0.02, "attention_dropout": 0.0, "use_cache": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    assert cfg.rope_theta == 1e6 and cfg.num_key_value_heads == 2


# ---- Dream's decoding rules, exactly ----------------------------------------------------------
def test_dream_decodes_the_canvas_as_one_block_by_default(engine, prompt_ids, tiny_engine):
    ids = prompt_ids[PROMPTS[1]]
    assert engine.validate(GenerationRequest(ids, gen_length=12)).block_length == 12
    assert tiny_engine.validate(GenerationRequest([1, 2], gen_length=12)).block_length == 3


def test_engine_gives_dreams_tokens(engine, prompt_ids, reference):
    """Wherever Dream's schedule commits at least one token at every step, the engine's tokens
    and NFE are Dream's. Everywhere, they are Dream's with unmaskd's at-least-one rule."""
    exact = differ = 0
    for case in CASES:
        (result,) = engine.generate([case.request(prompt_ids[case.prompt])])
        got = (result.token_ids, result.nfe)
        tokens, nfe, counts = reference(case)
        if min(counts) >= 1:
            assert got == (tokens, nfe), f"{case}: engine {got}, Dream {tokens, nfe}"
            exact += 1
        else:
            differ += (tokens, nfe) != got
        tokens, nfe, _ = reference(case, at_least_one=True)
        assert got == (tokens, nfe), f"{case} (at least one): engine {got}, ref {tokens, nfe}"
    # steps = L makes Dream commit nothing at its first step; most other shapes commit every step
    assert exact >= len(CASES) // 2 and differ >= 1, (exact, differ)


def test_batched_rows_give_dreams_tokens(engine, prompt_ids, reference):
    """Every case in one batch: left-padded rows of different prompts, lengths and rules."""
    results = engine.generate([c.request(prompt_ids[c.prompt]) for c in CASES])
    for case, result in zip(CASES, results):
        tokens, nfe, _ = reference(case, at_least_one=True)
        assert (result.token_ids, result.nfe) == (tokens, nfe), case


@pytest.mark.parametrize("sampler", ALGS)
def test_cli_generate_gives_dreams_tokens(dream_dir, reference, capsys, sampler):
    """`unmaskd generate --model DREAM --sampler S --block-length full --steps 4 --temperature 0
    --json` prints Dream's canvas and NFE (and so does the default block length)."""
    from unmaskd.cli.main import main

    case = Case(PROMPTS[0], 12, 4, sampler)
    tokens, nfe, counts = reference(case)
    assert min(counts) >= 1
    for block in (["--block-length", "full"], []):
        argv = ["generate", "--model", str(dream_dir), "--sampler", sampler, *block,
                "--gen-length", "12", "--steps", "4", "--temperature", "0", "--json",
                "--prompt", PROMPTS[0]]
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert (out["token_ids"], out["nfe"]) == (tokens, nfe)


# ---- everything else on Dream ----------------------------------------------------------------
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_modes_decode_dream_batch_invariantly(dream_dir, engine, prompt_ids, cache):
    """Fast-dLLM's caches on Dream's shifted head: every row decodes as if alone, and where
    each block takes one step (block-start forwards only) the cache changes nothing."""
    cached = Engine.from_dir(dream_dir, cache=cache)
    reqs = [GenerationRequest(prompt_ids[p], sampler, gen_length=12, block_length=block,
                              steps=steps, sampler_params=params)
            for p in PROMPTS for block, steps in ((4, 6), (12, 6), (3, 4))
            for sampler, params in (("topk_confidence", {}), ("threshold", {"threshold": 0.5}),
                                    ("entropy", {}))]
    alone = [cached.generate([r])[0] for r in reqs]
    batched = cached.generate(reqs)
    assert [(r.token_ids, r.nfe) for r in batched] == [(r.token_ids, r.nfe) for r in alone]
    assert all(r.nfe <= req.steps and engine.mask_id not in r.token_ids
               for r, req in zip(alone, reqs))
    one_step = [GenerationRequest(prompt_ids[p], "topk_confidence", gen_length=12,
                                  block_length=4, steps=3) for p in PROMPTS]
    assert [r.token_ids for r in cached.generate(one_step)] == \
        [r.token_ids for r in engine.generate(one_step)]


CACHE_CASES = [(p, L, block, steps, threshold) for p in PROMPTS
               for L, block in ((16, 4), (12, 12))
               for steps, threshold in [(L // block * k, None) for k in range(1, block + 1, 3)]
               + [(L, 0.3), (L, 0.9)]]


def cache_requests(prompt_ids) -> list[GenerationRequest]:
    return [GenerationRequest(prompt_ids[p], "threshold" if t else "topk_confidence",
                              {"threshold": t} if t else {}, gen_length=L, block_length=block,
                              steps=steps) for p, L, block, steps, t in CACHE_CASES]


def test_cached_reference_forward_is_exact_on_unchanged_tokens(prompt_ids, reference):
    """The reference's slice forwards over a cache of the same tokens give the full forward's
    logits (absolute RoPE positions, nothing masked), so differences below are the cache's."""
    ref = reference.model
    ids = prompt_ids[PROMPTS[0]] + [ref.mask_id] * 12
    full, kv = ref.forward(ids)
    start = len(ids) - 8
    torch.testing.assert_close(ref.forward(ids[start:], start, kv)[0], full[start:])
    torch.testing.assert_close(ref.forward(ids[start:start + 4], start, kv)[0],
                               full[start:start + 4])


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_caches_follow_fast_dllm_dream_block_loop(dream_dir, prompt_ids, reference, cache):
    """Fast-dLLM's Dream cache (generation_utils_block.py) queries the block (prefix: to the
    canvas end) at its own columns and shifts logits inside the slice, so the block's first
    position keeps its block-start logits (tests/dream_reference.py `cached_decode`)."""
    results = Engine.from_dir(dream_dir, cache=cache).generate(cache_requests(prompt_ids))
    for case, r in zip(CACHE_CASES, results):
        p, L, block, steps, threshold = case
        want = cached_decode(reference.model, prompt_ids[p], L, block, steps, threshold, cache)
        assert (r.token_ids, r.nfe) == want, case


def test_every_sampler_decodes_dream_alone_as_in_a_batch(engine, prompt_ids):
    from unmaskd.sampler_plugins import registered_samplers

    reqs = [GenerationRequest(prompt_ids[p], name, gen_length=L, steps=L // 2,
                              temperature=temperature, seed=3)
            for name in sorted(set(registered_samplers()) - {"learned"})
            for p, L, temperature in ((PROMPTS[0], 8, 0.0), (PROMPTS[1], 12, 0.7))]
    batched = engine.generate(reqs)
    alone = [engine.generate([r])[0] for r in reqs]
    assert [(r.token_ids, r.nfe) for r in batched] == [(r.token_ids, r.nfe) for r in alone]
    assert all(engine.mask_id not in r.token_ids for r in batched)


def test_eval_runs_a_task_file_on_dream(dream_dir, tmp_path, capsys):
    """`unmaskd eval --data FILE` on Dream: prompts as they are, messages through Dream's chat
    template, one block by default."""
    from unmaskd.cli.main import main

    sample = Path(__file__).parent.parent / "tasks/samples/gsm8k_style.jsonl"
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(dream_dir), "--data", str(sample), "--gen-length", "8",
                 "--threads", "1", "--sampler", "maskgit_plus:steps=4", "--json",
                 str(out)]) == 0
    assert "| maskgit_plus" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["n"] == 20 and result["results"][0]["mean_nfe"] == 4


@pytest.fixture
def llada_policy(tiny_model_dir, dream_dir, tmp_path):
    """A policy trained for the tiny LLaDA model, offered to the Dream model's store."""
    from unmaskd.sampler_plugins.policy_net import PolicyNet
    from unmaskd.sampler_plugins.policy_store import STORE, model_fingerprint, save_policy

    root = tmp_path / "policies"
    save_policy(PolicyNet(), root / "llada-full", {
        "block_length": 12, "gen_length": 12, "alpha": 1.0,
        "model": {"name": "tiny-llada", "fingerprint": model_fingerprint(tiny_model_dir)}})
    assert STORE.load_dir(root, model_fingerprint(dream_dir)) == []
    yield "llada-full"
    STORE.remove("llada-full")
    STORE.skipped.pop("llada-full", None)


def test_a_policy_for_another_model_runs_only_when_asked(engine, prompt_ids, dream_dir,
                                                         llada_policy, caplog, monkeypatch):
    """The paper's LLaDA-to-Dream transfer: refused by fingerprint unless the request says
    allow_other_model; then logged, and shown in the response's resolved params."""
    from fastapi.testclient import TestClient
    from unmaskd.engine.sequence import InvalidRequest
    from unmaskd.sampler_plugins.policy_store import STORE
    from unmaskd.server.app import create_app
    from unmaskd.server.settings import ServerSettings

    monkeypatch.setattr(STORE, "policies", {})  # none trained for Dream (other tests' aside)
    ids = prompt_ids[PROMPTS[1]]
    with pytest.raises(InvalidRequest, match="allow_other_model=true uses it anyway"):
        engine.validate(GenerationRequest(ids, "learned", {"policy": llada_policy}))
    with pytest.raises(InvalidRequest, match="no learned policy is loaded"):
        engine.validate(GenerationRequest(ids, "learned"))
    allowed = {"policy": llada_policy, "allow_other_model": True}
    with caplog.at_level("WARNING"):
        (result,) = engine.generate([GenerationRequest(ids, "learned", allowed, gen_length=12)])
    assert result.nfe >= 1 and engine.mask_id not in result.token_ids
    assert any("allow_other_model" in r.message and llada_policy in r.message
               for r in caplog.records)
    default = engine.validate(GenerationRequest(ids, "learned", {"allow_other_model": True}))
    assert default.params.policy == llada_policy
    with TestClient(create_app(ServerSettings(model=dream_dir), engine)) as client:
        r = client.post("/generate", json={"prompt": PROMPTS[1], "sampler": "learned",
                                           "sampler_params": allowed, "max_new_tokens": 12})
        assert r.status_code == 200, r.text
        assert r.json()["sampler_params"]["allow_other_model"] is True
        assert r.json()["sampler_params"]["policy"] == llada_policy


def test_train_policy_on_dream_then_decode_with_it(dream_dir, engine, prompt_ids, tmp_path):
    from unmaskd.sampler_plugins.policy_store import STORE, model_fingerprint
    from unmaskd.training.policy_trainer import train

    out = tmp_path / "run"
    train(["--model", str(dream_dir), "--out", str(out), "--gen-length", "8",
           "--block-length", "full", "--iterations", "1", "--prompts-per-step", "2",
           "--group-size", "2"])
    meta = json.loads((out / "policy/policy.json").read_text())
    assert meta["model"]["fingerprint"] == model_fingerprint(dream_dir)
    assert STORE.load_dir(out, model_fingerprint(dream_dir)) == ["policy"]
    try:
        reqs = [GenerationRequest(prompt_ids[p], "learned", {"policy": "policy"}, gen_length=8)
                for p in PROMPTS]
        batched = engine.generate(reqs)
        alone = [engine.generate([r])[0] for r in reqs]
        assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    finally:
        STORE.remove("policy")


def test_serve_answers_generate_and_chat_on_a_dream_folder(dream_dir, tmp_path):
    import httpx
    from conftest import start_server

    server = start_server(dream_dir, tmp_path)
    try:
        r = httpx.post(server.url + "/generate", timeout=60, json={
            "prompt": PROMPTS[1], "sampler": "margin", "max_new_tokens": 12, "steps": 4})
        assert r.status_code == 200, r.text
        assert r.json()["nfe"] == 4 and len(r.json()["token_ids"]) == 12
        r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
            "model": "Dream-tiny", "messages": [{"role": "user", "content": "7 + 8 ="}],
            "max_tokens": 8, "sampler": "maskgit_plus"})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
        with httpx.stream("POST", server.url + "/generate", timeout=60, json={
                "prompt": PROMPTS[1], "sampler": "entropy", "max_new_tokens": 12, "steps": 6,
                "stream": True}) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert r.status_code == 200 and len(events) == 6 + 2  # steps, result, [DONE]
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        assert 'unmaskd_requests_total' in metrics and 'sampler="entropy"' in metrics
        assert not (dream_dir / "EXECUTED").exists()
    finally:
        assert server.stop() == 0
