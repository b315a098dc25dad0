"""A model folder or flag that cannot decode is refused when the model loads, in one line that
names the field, by every command; `serve` answers nothing, /health included, before one real
decode on the loaded model has succeeded (issue 26: such folders loaded, /health said ok, and
every request got a 500)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import build_tiny_model, free_port
from unmaskd.cli.main import main
from unmaskd.dllm.backend import ConfigError
from unmaskd.dllm.checkpoint import load_dllm
from unmaskd.engine.loop import Engine


def generate_error(model_dir, *flags: str, capsys) -> str:
    """The one stderr line of `unmaskd generate` that failed to load the model."""
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", str(model_dir), "--prompt", "x", "--threads", "1", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("field,value,says", [
    ("mask_token_id", 99999, "mask_token_id=99999 is not a token id: vocab_size is"),
    ("eos_token_id", -1, "eos_token_id=-1 is not a token id"),
    ("rope_theta", "ten thousand", "rope_theta='ten thousand' must be a number"),
    ("rope_theta", 0, "rope_theta=0 must be a finite number > 0"),
    ("max_sequence_length", 0, "max_sequence_length=0 must be >= 1"),
    ("max_sequence_length", -5, "max_sequence_length=-5 must be >= 1"),
    ("n_layers", True, "n_layers=True must be an integer"),
    ("vocab_size", 100, "vocab_size=100 is smaller than the tokenizer's"),
])
def test_a_config_that_cannot_decode_is_refused_naming_the_field(tiny_model_copy, field, value,
                                                                 says, capsys):
    path = tiny_model_copy / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    assert says in generate_error(tiny_model_copy, capsys=capsys)


def test_a_mask_token_id_flag_outside_the_vocabulary_is_named(tiny_model_dir, capsys):
    line = generate_error(tiny_model_dir, "--mask-token-id", "99999", capsys=capsys)
    assert "--mask-token-id 99999 is not a token id" in line


def test_a_garbage_tokenizer_is_one_line(tiny_model_copy, capsys):
    (tiny_model_copy / "tokenizer.json").write_text('{"garbage": 1}')
    assert "tokenizer files unreadable (KeyError" in generate_error(tiny_model_copy,
                                                                    capsys=capsys)


@pytest.mark.parametrize("device", ["cuda:99", "bogus"])
def test_a_device_torch_cannot_use_is_one_line(tiny_model_dir, device, capsys):
    """cuda:99 fails on a CPU build of torch ("not compiled with CUDA") and on any machine with
    fewer GPUs, as `--device cuda` does on a CPU build."""
    assert f"--device {device}: " in generate_error(tiny_model_dir, "--device", device,
                                                    capsys=capsys)


def test_block_diffusion_configs_are_checked_too(tiny_sdar_dir, tmp_path):
    import shutil

    folder = tmp_path / "sdar"
    shutil.copytree(tiny_sdar_dir, folder)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "max_position_embeddings": 0}))
    with pytest.raises(ConfigError, match="max_position_embeddings=0 must be >= 1"):
        load_dllm(folder)


@pytest.fixture(scope="module")
def odd_head_dim_dir(tmp_path_factory):
    """A folder every field check passes (d_model 36 over 4 heads) whose forward fails: RoPE
    needs an even head dimension, and 9 is odd."""
    return build_tiny_model(tmp_path_factory.mktemp("odd_heads"), d_model=36)


def test_self_test_refuses_a_model_that_loads_but_cannot_decode(odd_head_dim_dir):
    engine = Engine.from_dir(odd_head_dim_dir)  # loads
    with pytest.raises(ConfigError, match="loads but cannot decode: RuntimeError"):
        engine.self_test()
    assert not engine.active


def test_self_test_decodes_a_sound_model_and_refuses_a_default_past_its_context(
        tiny_model_dir, tiny_engine):
    result = tiny_engine.self_test()
    assert result.nfe >= 1 and tiny_engine.mask_id not in result.token_ids
    too_long = Engine.from_dir(tiny_model_dir, default_gen_length=200)  # context: 128
    with pytest.raises(ConfigError, match=r"canvas 200\) is refused: gen_length"):
        too_long.self_test()


def test_serve_refuses_to_start_a_model_that_cannot_decode(odd_head_dim_dir):
    """It exits with one error line, never listening, instead of answering /health with ok
    and every request with a 500."""
    run = subprocess.run(
        [sys.executable, "-m", "unmaskd.cli", "serve", "--model", str(odd_head_dim_dir),
         "--port", str(free_port()), "--threads", "1"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert run.returncode == 2 and len(errors) == 1, run.stderr
    assert "cannot decode: RuntimeError" in errors[0]
    assert "Traceback" not in run.stderr and "Uvicorn running" not in run.stderr
