"""The command line: `--block-length full` means one block over the canvas in every command."""

import json

import pytest
from unmaskd.engine.cli import main


def test_generate_takes_full_block_length_and_refuses_a_bad_one(tiny_model_dir, capsys):
    common = ["generate", "--model", str(tiny_model_dir), "--prompt", "Question: 1\\nAnswer:",
              "--gen-length", "8", "--threads", "1"]
    # 2 steps fit one block of 8 (full diffusion) but not the default 4 blocks of 2
    assert main(common + ["--block-length", "full", "--steps", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nfe"] == 2
    assert main(common + ["--steps", "2"]) == 2
    assert "steps" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(common + ["--block-length", "half"])
    assert exit_info.value.code == 2
    assert "--block-length: expected a positive integer or 'full', got 'half'" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(common + ["--block-length", "0"])
    assert "--block-length: expected a positive integer or 'full', got '0'" in (
        capsys.readouterr().err)
