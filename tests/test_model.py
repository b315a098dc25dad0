"""The LLaDA-architecture model and its checkpoint format."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from unmaskd.dllm.backend import ConfigError
from unmaskd.dllm.checkpoint import CheckpointError, load_dllm, save_dllm
from unmaskd.dllm.llada import LLaDAConfig, LLaDAModel


def small_config(**overrides) -> LLaDAConfig:
    base = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=48, vocab_size=50,
                embedding_size=64, max_sequence_length=64, mask_token_id=3, eos_token_id=0,
                pad_token_id=0)
    return LLaDAConfig(**{**base, **overrides})


def test_padding_invariance_left_and_right():
    torch.manual_seed(0)
    model = LLaDAModel(small_config()).eval()
    model.init_weights(std=0.3)
    a, b = torch.randint(4, 50, (7,)), torch.randint(4, 50, (12,))
    alone_a, alone_b = model(a[None])[0], model(b[None])[0]
    pad = torch.zeros(5, dtype=torch.long)
    left = torch.stack([torch.cat([pad, a]), b])
    left_mask = torch.stack([torch.cat([torch.zeros(5), torch.ones(7)]), torch.ones(12)])
    out = model(left, left_mask)
    torch.testing.assert_close(out[0, 5:], alone_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], alone_b, atol=1e-5, rtol=1e-5)
    right = torch.stack([torch.cat([a, pad]), b])
    right_mask = torch.stack([torch.cat([torch.ones(7), torch.zeros(5)]), torch.ones(12)])
    torch.testing.assert_close(model(right, right_mask)[0, :7], alone_a, atol=1e-5, rtol=1e-5)


def test_attention_is_bidirectional():
    model = LLaDAModel(small_config()).eval()
    model.init_weights(std=0.3)
    x = torch.randint(4, 50, (1, 6))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 50
    assert not torch.allclose(model(x)[0, 0], model(y)[0, 0])  # position 0 sees the future


def test_save_load_round_trip_is_exact(tiny_model_dir, tmp_path):
    model, tok = load_dllm(tiny_model_dir)
    save_dllm(model, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    again, _ = load_dllm(tmp_path)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert "model.transformer.wte.weight" in keys
    assert "model.transformer.blocks.0.ff_proj.weight" in keys
    assert "model.transformer.ln_f.weight" in keys and "model.transformer.ff_out.weight" in keys


def test_sharded_checkpoint_and_dtype(tiny_model_copy):
    state = load_file(str(tiny_model_copy / "model.safetensors"))
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half],
              "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, str(tiny_model_copy / name))
    weight_map = {k: name for name, ks in shards.items() for k in ks}
    (tiny_model_copy / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tiny_model_copy / "model.safetensors").unlink()
    model, _ = load_dllm(tiny_model_copy, dtype=torch.bfloat16)
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    torch.testing.assert_close(model.transformer.wte.weight.float(),
                               state["model.transformer.wte.weight"].bfloat16().float())


@pytest.mark.parametrize("field,value", [("alibi", True), ("block_type", "sequential"),
                                         ("attention_layer_norm", True)])
def test_unsupported_config_field_is_refused(tiny_model_copy, field, value):
    path = tiny_model_copy / "config.json"
    cfg = json.loads(path.read_text())
    cfg[field] = value
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=field):
        load_dllm(tiny_model_copy)


def test_training_only_fields_are_ignored_and_mask_id_overridable(tiny_model_copy):
    path = tiny_model_copy / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(init_fn="mitchell", init_std=0.02, residual_dropout=0.0, precision="amp_bf16")
    del cfg["mask_token_id"]
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="mask_token_id"):
        load_dllm(tiny_model_copy)
    model, _ = load_dllm(tiny_model_copy, mask_token_id=2)
    assert model.config.mask_token_id == 2


def test_missing_and_corrupt_weights_name_the_file(tiny_model_copy):
    weights = tiny_model_copy / "model.safetensors"
    weights.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_dllm(tiny_model_copy)
    weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_dllm(tiny_model_copy)


def test_shape_mismatch_is_refused(tiny_model_copy):
    path = tiny_model_copy / "config.json"
    cfg = json.loads(path.read_text())
    cfg["mlp_hidden_size"] += 32
    path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        load_dllm(tiny_model_copy)


def test_weight_tying_uses_embedding_as_head():
    model = LLaDAModel(small_config(weight_tying=True)).eval()
    model.init_weights(std=0.3)
    assert not hasattr(model.transformer, "ff_out")
    assert model(torch.randint(0, 50, (1, 5))).shape == (1, 5, 64)


def test_tokenizer_round_trip_and_autotokenizer(tiny_model_dir):
    from transformers import AutoTokenizer
    from unmaskd.tasks.arithmetic import make_split

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    for p in make_split("validation", 20):
        text = p.prompt + p.answer
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
    digits = tok.convert_ids_to_tokens(tok("1234")["input_ids"])
    assert digits == ["1", "2", "3", "4"]
    assert tok.mask_token == "<|mdm_mask|>" and tok.eos_token == "<|endoftext|>"
    chat = tok.apply_chat_template([{"role": "user", "content": "Ava has 2 eggs."}],
                                   tokenize=False, add_generation_prompt=True)
    assert chat == "Question: Ava has 2 eggs.\nAnswer:"


def test_training_is_seed_deterministic_and_resumes_exactly(tmp_path):
    """A straight run equals a fresh run (own tokenizer, same seed) stopped after 3 steps and
    resumed: weights, data RNG and log (the LR schedule depends on --steps, not on where a
    sitting ends)."""
    import json

    import torch
    from unmaskd.training.dllm_trainer import main as train_dllm

    common = ["--steps", "6", "--batch-size", "4", "--d-model", "32", "--n-layers", "1",
              "--pool", "64", "--val-every", "0", "--warmup", "2", "--ckpt-every", "100"]
    train_dllm(["--out", str(tmp_path / "a")] + common)
    train_dllm(["--out", str(tmp_path / "b"), "--stop-at", "3"] + common)
    assert torch.load(tmp_path / "b/ckpt.pt", weights_only=True)["step"] == 3
    train_dllm(["--out", str(tmp_path / "b")] + common)
    a = torch.load(tmp_path / "a/ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "b/ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 6 and a["task"] == "arithmetic"
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # the arithmetic folder is what it was before --task: no task file, a 128-token context
    assert not (tmp_path / "a/model/unmaskd_task.json").exists()
    assert load_dllm(tmp_path / "a/model")[0].config.max_sequence_length == 128
    assert torch.equal(a["gen"], b["gen"])
    log = [[json.loads(ln)["loss"] for ln in (tmp_path / d / "log.jsonl").read_text().splitlines()]
           for d in "ab"]
    assert log[0] == log[1] and len(log[0]) == 6


def test_length_sorted_micro_batches_give_the_whole_batch_gradient(tiny_model_dir):
    """Computing a batch in length-sorted slices (each without its shared left padding) is a
    speed-up only: the loss and every gradient match the one-slice computation."""
    from tokenizers import Tokenizer
    from unmaskd.tasks.arithmetic import make_split
    from unmaskd.training.dllm_trainer import batch_loss_backward, encode_pool, make_batch

    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    model = load_dllm(tiny_model_dir)[0].requires_grad_(True)
    cfg = model.config
    prompts, canvases = encode_pool(tok, make_split("train", 40), cfg.eos_token_id)
    gen = torch.Generator().manual_seed(0)
    batch = make_batch(prompts, canvases, torch.arange(40), cfg.mask_token_id, cfg.pad_token_id,
                       gen)
    assert batch[1].sum(1).unique().numel() > 4  # prompts of many lengths: slices differ
    losses, grads = [], []
    for micro in (1, 4):
        model.zero_grad()
        losses.append(batch_loss_backward(model, *batch, micro_batches=micro))
        grads.append([p.grad.clone() for p in model.parameters()])
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(*grads))


def test_prefix_rows_are_masked_as_block_wise_decoding_leaves_a_canvas():
    """--prefix-rate: those rows are clean before a cut, masked at some rate in the window after
    it and fully masked beyond, with the cut inside the answer or one window past it, so the
    EOS padding that ends the answer is hidden (the model must know where it ends); the other
    rows keep uniform masking."""
    from unmaskd.training.dllm_trainer import make_batch

    L, window, eos, mask = 64, 8, 0, 2
    canvases = torch.full((200, L), eos)
    canvases[:, :20] = 7  # answers of 20 tokens
    gen = torch.Generator().manual_seed(0)
    ids, _, target, masked = make_batch([[5, 6]] * 200, canvases, torch.arange(200), mask, 1,
                                        gen, prefix_rate=0.5, window=window, eos=eos)
    prefix_like = 0
    for row in masked:
        first = int(row.float().argmax()) if row.any() else L  # in [cut, cut + window]
        if row[first + window:].all() and first + window < L and not row[:first].any():
            prefix_like += 1
            assert first <= 20 + 2 * window
    assert 70 <= prefix_like <= 130  # about half the rows
    assert (ids[:, 2:][masked] == mask).all() and torch.equal(ids[:, 2:][~masked], target[~masked])
    none = make_batch([[5, 6]] * 200, canvases, torch.arange(200), mask, 1,
                      torch.Generator().manual_seed(0))[3]
    # uniform masking leaves some padding visible in nearly every row
    assert sum(bool((~r[20:]).any()) for r in none) > 190


def test_result_weight_marks_every_lines_result_and_weights_the_loss(tiny_model_dir):
    """--result-weight: the digits after `= ` and `#### ` (and only those) get the weight, and
    the loss becomes the weighted mean of the masked tokens' cross-entropy."""
    from tokenizers import Tokenizer
    from unmaskd.tasks.arithmetic import make_split
    from unmaskd.training.dllm_trainer import (
        batch_loss_backward,
        encode_pool,
        make_batch,
        result_weights,
    )

    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    problems = make_split("train", 8)
    prompts, canvases = encode_pool(tok, problems, 0)
    weights = result_weights(tok, canvases, 4.0)
    for p, canvas, w in zip(problems, canvases, weights):
        marked = tok.decode([i for i, x in zip(canvas.tolist(), w.tolist()) if x == 4.0])
        results = [ln.rstrip(".").split("= ")[-1].split("#### ")[-1]
                   for ln in p.answer.split("\n")]
        assert marked.replace(" ", "") == "".join(results)
        assert set(w.tolist()) <= {1.0, 4.0}

    model = load_dllm(tiny_model_dir)[0].requires_grad_(True)
    batch = make_batch(prompts, canvases, torch.arange(8), model.config.mask_token_id,
                       model.config.pad_token_id, torch.Generator().manual_seed(0))
    ids, attn, target, masked = batch
    with torch.no_grad():
        logits = model(ids, attn)[:, -target.shape[1]:]
    ce = torch.nn.functional.cross_entropy(logits[masked], target[masked], reduction="none")
    expected = (ce * weights[masked]).sum() / weights[masked].sum()
    got = batch_loss_backward(model, *batch, micro_batches=2, weight=weights)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, ce.mean(), atol=1e-4)


def test_lr_schedule_warmup_stable_decay_and_decay_to_zero():
    from unmaskd.training.dllm_trainer import lr_at

    # warmup-stable-decay (the previous recipe): warm-up, constant, then linear decay to 10%
    # over the last half
    assert lr_at(0, 100, 1.0, 10, 0.5) == 0.1 and lr_at(9, 100, 1.0, 10, 0.5) == 1.0
    assert lr_at(49, 100, 1.0, 10, 0.5) == 1.0 and lr_at(50, 100, 1.0, 10, 0.5) == 1.0
    assert math.isclose(lr_at(100, 100, 1.0, 10, 0.5), 0.1)
    # decay over the whole run starts after the warm-up, and can end at zero
    assert lr_at(10, 100, 1.0, 10, 1.0, 0.0) == 1.0
    assert math.isclose(lr_at(55, 100, 1.0, 10, 1.0, 0.0), 0.5)
    assert lr_at(100, 100, 1.0, 10, 1.0, 0.0) == 0.0
