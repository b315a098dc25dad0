"""The block-diffusion backends (SDAR, LLaDA2 MoE) against an independent reference.

tests/blockdiff_reference.py has its own forward for both families and the families' decoding
(`block_diffusion_generate` / LLaDA2's `generate` at temperature 0), and builds the tiny random
checkpoints (the conftest fixtures `tiny_sdar_dir`, `tiny_llada2_dir`). Here: both folders load
and bad config values are refused by name; each Model's forward equals the reference's, full and
over a block-causal key/value cache passed through `kv` as the engine does; and the reference's
decodes keep the properties the engine's comparison with them relies on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from blockdiff_reference import (
    ReferenceModel,
    cases,
    decode,
    num_transfer_tokens,
    prompts,
    reference_decode,
)
from unmaskd.dllm.backend import ConfigError, block_causal_bias
from unmaskd.dllm.checkpoint import load_dllm
from unmaskd.dllm.llada2 import LLaDA2Model
from unmaskd.dllm.sdar import SDARModel

FAMILIES = ("sdar", "llada2")


@pytest.fixture
def model_dir(request, tiny_sdar_dir, tiny_llada2_dir) -> Path:
    return {"sdar": tiny_sdar_dir, "llada2": tiny_llada2_dir}[request.param]


@pytest.fixture
def model_copy(model_dir, tmp_path) -> Path:
    """A private copy a test may edit."""
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# ---- (a) loading and refusing -------------------------------------------------------------------

def test_both_folders_load_with_their_special_ids(tiny_sdar_dir, tiny_llada2_dir):
    sdar, tok = load_dllm(tiny_sdar_dir)
    assert isinstance(sdar, SDARModel) and sdar.block_causal and sdar.logit_offset == 0
    assert (sdar.block_size, sdar.sampler_defaults, sdar.kv_layout) == (
        4, {"threshold": {"threshold": 0.9}}, (2, 2, 16))
    assert tok.convert_ids_to_tokens(sdar.config.mask_token_id) == "<|mask|>"
    llada2, tok = load_dllm(tiny_llada2_dir)
    assert isinstance(llada2, LLaDA2Model) and llada2.block_causal
    assert (llada2.block_size, llada2.sampler_defaults, llada2.kv_layout) == (
        32, {"threshold": {"threshold": 0.95}}, (2, 2, 16))
    # LLaDA2's config has no ids: they are the tokens the tokenizer declares
    assert "mask_token_id" not in json.loads((tiny_llada2_dir / "config.json").read_text())
    assert llada2.config.mask_token_id == tok.mask_token_id == tok.convert_tokens_to_ids("<|mask|>")
    assert llada2.config.eos_token_id == tok.eos_token_id
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True).endswith("assistant\n")


@pytest.mark.parametrize("model_dir,field,value", [
    ("sdar", "rope_scaling", {"rope_type": "yarn", "factor": 4.0}),
    ("sdar", "use_sliding_window", True),
    ("sdar", "attention_bias", True),
    ("sdar", "hidden_act", "gelu"),
    ("llada2", "rope_scaling", {"type": "linear", "factor": 2.0}),
    ("llada2", "use_sliding_window", True),
    ("llada2", "score_function", "softmax"),
    ("llada2", "router_dtype", "bf16"),
    ("llada2", "norm_head", True),
    ("llada2", "norm_topk_prob", False),
    ("llada2", "n_group", 4),  # 6 experts do not split into 4 groups of two or more
    ("llada2", "topk_group", 3),
    ("llada2", "num_experts_per_tok", 4),  # more than the one kept group of 3 holds
    ("llada2", "rotary_dim", 16),  # head_dim 16 x partial_rotary_factor 0.5 = 8
], indirect=["model_dir"])
def test_unsupported_config_values_are_refused_by_name(model_copy, field, value):
    edit_config(model_copy, **{field: value})
    with pytest.raises(ConfigError, match=field):
        load_dllm(model_copy)


def test_llada2_needs_a_declared_mask_token_or_an_explicit_id(tiny_llada2_dir, tmp_path):
    folder = Path(shutil.copytree(tiny_llada2_dir, tmp_path / "model"))
    path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(path.read_text())
    del tok_cfg["mask_token"]
    path.write_text(json.dumps(tok_cfg))
    with pytest.raises(ConfigError, match="mask_token"):
        load_dllm(folder)
    model, _ = load_dllm(folder, mask_token_id=7)
    assert model.config.mask_token_id == 7


def test_tied_head_ignores_the_checkpoints_copy(tiny_sdar_dir, tmp_path):
    folder = Path(shutil.copytree(tiny_sdar_dir, tmp_path / "model"))
    edit_config(folder, tie_word_embeddings=True)
    model, _ = load_dllm(folder)  # the file still holds lm_head.weight: dropped, not refused
    assert not hasattr(model, "lm_head")
    ids = prompts(folder)[0]
    torch.testing.assert_close(model(torch.tensor([ids]))[0],
                               ReferenceModel(folder).forward(ids, 0, None, 4)[0],
                               atol=1e-4, rtol=1e-4)


# ---- (b) the forward equals the reference's -----------------------------------------------------

@pytest.mark.parametrize("model_dir", FAMILIES, indirect=True)
def test_full_forward_is_block_causal_and_matches_reference(model_dir):
    model, _ = load_dllm(model_dir)
    ref = ReferenceModel(model_dir)
    ids = prompts(model_dir)[0] + [ref.mask_id] * 9
    logits = model(torch.tensor([ids]))[0]
    torch.testing.assert_close(logits, ref.forward(ids, 0, None, model.block_size)[0],
                               atol=1e-4, rtol=1e-4)
    # a change in the last block leaves every earlier block's logits as they were (up to
    # rounding: the experts see other groups of tokens)
    changed = ids[:-1] + [ids[0]]
    last = len(ids) - 1 - (len(ids) - 1) % model.block_size
    again = model(torch.tensor([changed]))[0]
    torch.testing.assert_close(again[:last], logits[:last], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(again[last:], logits[last:], atol=1e-3)


@pytest.mark.parametrize("model_dir", FAMILIES, indirect=True)
def test_left_padding_does_not_move_the_blocks(model_dir):
    model, _ = load_dllm(model_dir)
    a, b = prompts(model_dir)[0][:13], prompts(model_dir)[0]
    pad = len(b) - len(a)
    batch = torch.tensor([[0] * pad + a, b])
    keep = torch.tensor([[0] * pad + [1] * len(a), [1] * len(b)])
    out = model(batch, keep)
    torch.testing.assert_close(out[0, pad:], model(torch.tensor([a]))[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], model(torch.tensor([b]))[0], atol=1e-5, rtol=1e-5)


class BlockCache:
    """A writer like the engine's: keeps every layer's keys/values of the positions stored so
    far and attends a forward to them and to itself with the block-causal mask of `block`."""

    def __init__(self, block: int):
        self.block = block
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def writer(self, positions: torch.Tensor, store: bool):
        def write(layer: int, k: torch.Tensor, v: torch.Tensor):
            keys = torch.cat([self.k[layer], k], 2) if layer in self.k else k
            values = torch.cat([self.v[layer], v], 2) if layer in self.v else v
            if store:
                self.k[layer], self.v[layer] = keys, values
            key_positions = torch.arange(keys.shape[2])[None]
            return keys, values, block_causal_bias(positions, key_positions, self.block,
                                                   dtype=k.dtype)
        return write


@pytest.mark.parametrize("model_dir", FAMILIES, indirect=True)
def test_block_steps_over_a_cache_match_reference(model_dir):
    """The prefill of the prompt's full blocks, then the next block's steps over the cache, at
    a block length (8) other than the model's own: the mask comes through `kv`."""
    model, _ = load_dllm(model_dir)
    ref = ReferenceModel(model_dir)
    B = 8
    prompt = prompts(model_dir)[0]  # 31 tokens: 3 full blocks of 8 and a tail of 7
    done = len(prompt) // B * B
    cache, ref_cache = BlockCache(B), ref.forward(prompt[:done], 0, None, B)[1]
    positions = torch.arange(done)[None]
    model(torch.tensor([prompt[:done]]), positions=positions,
          kv=cache.writer(positions, store=True))
    block = prompt[done:] + [ref.mask_id]
    positions = torch.arange(done, done + B)[None]
    logits = model(torch.tensor([block]), positions=positions,
                   kv=cache.writer(positions, store=False))[0]
    expected = ref.forward(block, done, ref_cache, B)[0]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    # the same rows as a full block-causal forward over everything (LLaDA2's recompute)
    full = ref.forward(prompt[:done] + block, 0, None, B)[0][done:]
    torch.testing.assert_close(expected, full, atol=1e-4, rtol=1e-4)


# ---- (c) the reference's decodes ----------------------------------------------------------------

def topk_nfe(prompt_len: int, gen_length: int, B: int, steps: int) -> int:
    """Top-k spends, per block, the steps until the schedule covers the block's masks."""
    schedule, nfe = num_transfer_tokens(B, steps), 0
    n_blocks = -(-(prompt_len + gen_length) // B)
    for b in range(prompt_len // B, n_blocks):
        masks = B - max(0, prompt_len - b * B)
        nfe += next(n for n in range(1, steps + 1) if sum(schedule[:n]) >= masks)
    return nfe


@pytest.mark.parametrize("model_dir", FAMILIES, indirect=True)
def test_reference_decodes(model_dir):
    mask = ReferenceModel(model_dir).mask_id
    eos = ReferenceModel(model_dir).eos_id
    stops = 0
    for prompt in prompts(model_dir):
        for case in cases():
            canvas, nfe, writes = reference_decode(model_dir, prompt, **case)
            P, B = len(prompt), case["block_length"]
            n_blocks = -(-(P + case["gen_length"]) // B)
            assert len(canvas) == n_blocks * B - P
            decoded = n_blocks - P // B
            if case["stop_at_eos"] and eos in canvas:
                stops += 1
                end = (P + canvas.index(eos)) // B * B + B  # the end of EOS's block
                assert mask not in canvas[:end - P] and set(canvas[end - P:]) <= {mask}
                decoded = end // B - P // B
                full = reference_decode(model_dir, prompt, **{**case, "stop_at_eos": False})
                assert full[0][:end - P] == canvas[:end - P] and full[1] >= nfe
            else:
                assert mask not in canvas
            assert writes == (P >= B) + decoded  # the prefill, then each finished block
            if case["sampler"] == "topk_confidence":
                steps = case["steps_per_block"]
                if "llada2" in str(model_dir):
                    steps = min(steps, case["gen_length"])
                assert nfe == topk_nfe(P, case["gen_length"], B, steps)
            elif not case["stop_at_eos"]:  # at least k_i per step: never slower than top-k
                topk = {**case, "sampler": "topk_confidence", "threshold": None}
                assert nfe <= reference_decode(model_dir, prompt, **topk)[1]
    assert stops  # the tiny models do write EOS, so the stop is exercised


@pytest.mark.parametrize("model_dir", FAMILIES, indirect=True)
def test_cached_decode_equals_recomputing_the_prefix(model_dir):
    """SDAR's cache and LLaDA2's published loop (the whole window every step) decode alike."""
    ref = ReferenceModel(model_dir)
    for prompt in prompts(model_dir):
        for case in cases()[::3]:
            cached = decode(ref, prompt, **case)
            recomputed = decode(ref, prompt, **case, prefix="recompute")
            assert cached[:2] == recomputed[:2] and recomputed[2] == 0


@pytest.mark.parametrize("model_dir", FAMILIES, indirect=True)
def test_threshold_above_one_is_topk(model_dir):
    """LLaDA2 has no static rule: a threshold no confidence passes leaves the top-k_i floor."""
    prompt = prompts(model_dir)[0]
    for steps in (1, 2, 3, 4):
        topk = reference_decode(model_dir, prompt, 16, 4, steps, "topk_confidence")
        assert reference_decode(model_dir, prompt, 16, 4, steps, "threshold", 1.0) == topk


def test_llada2_caps_steps_at_gen_length(tiny_llada2_dir, tiny_sdar_dir):
    """LLaDA2's generate: steps = min(steps, gen_length); SDAR keeps its steps."""
    prompt = prompts(tiny_llada2_dir)[2]  # 8 tokens: the answer starts a block of 4
    _, nfe, _ = reference_decode(tiny_llada2_dir, prompt, 2, 4, 4, "topk_confidence")
    assert nfe == 2  # 2 steps of 2, not 4 of 1
    _, nfe, _ = reference_decode(tiny_sdar_dir, prompts(tiny_sdar_dir)[2], 2, 4, 4,
                                 "topk_confidence")
    assert nfe == 4
