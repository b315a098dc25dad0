"""The command line: `--block-length full` means one block over the canvas in every command."""

import json
from pathlib import Path

import pytest
from unmaskd.cli.main import main


def test_generate_takes_full_block_length_and_refuses_a_bad_one(tiny_model_dir, capsys):
    common = ["generate", "--model", str(tiny_model_dir), "--prompt", "Question: 1\\nAnswer:",
              "--gen-length", "8", "--threads", "1"]
    # 2 steps fit one block of 8 (full diffusion) but not the default 4 blocks of 2
    assert main(common + ["--block-length", "full", "--steps", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nfe"] == 2
    assert main(common + ["--steps", "2"]) == 2
    assert "steps" in capsys.readouterr().err
    # each of the 4 blocks of 2 in one step
    assert main(common + ["--steps-per-block", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nfe"] == 4
    with pytest.raises(SystemExit):
        main(common + ["--steps", "4", "--steps-per-block", "1"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(common + ["--block-length", "half"])
    assert exit_info.value.code == 2
    assert "--block-length: expected a positive integer or 'full', got 'half'" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(common + ["--block-length", "0"])
    assert "--block-length: expected a positive integer or 'full', got '0'" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("command", ["generate", "eval", "train-policy"])
def test_an_unloadable_model_is_one_line_in_every_command(tiny_model_copy, tmp_path, command,
                                                          capsys):
    """A folder that cannot load gives `error: ...` naming the problem and exit 2, as `serve`
    does, not a traceback: here non-finite weights (1 MB of 0xFF in the file, same size)."""
    weights = tiny_model_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = b"\xff" * 4096  # tensor data (the header is at the start): NaNs
    weights.write_bytes(bytes(data))
    args = {"generate": ["--prompt", "x"], "eval": ["--sampler", "threshold", "--n", "1"],
            "train-policy": ["--out", str(tmp_path / "run")]}[command]
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--model", str(tiny_model_copy), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite" in err[0] and err[0].startswith("error: "), err


def test_a_folder_without_tokenizer_json_says_so(tiny_model_copy, capsys):
    (tiny_model_copy / "tokenizer.json").unlink()
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(tiny_model_copy), "--prompt", "x"])
    err = capsys.readouterr().err
    assert "tokenizer.json: not found" in err and len(err.strip().splitlines()) == 1


def test_a_shipped_model_is_found_by_name_unless_a_folder_has_that_name(tmp_path, monkeypatch):
    from unmaskd.dllm import EMBEDDED_MODEL_DIR, model_dir
    from unmaskd.server.settings import parse_settings

    monkeypatch.chdir(tmp_path)
    assert model_dir("embedded") == EMBEDDED_MODEL_DIR
    assert parse_settings(["--model", "embedded"]).model == EMBEDDED_MODEL_DIR
    assert model_dir("no-such-model") == Path("no-such-model")  # the loader says it is missing
    (tmp_path / "embedded").mkdir()
    assert model_dir("embedded") == Path("embedded")


def test_help_goes_to_stdout_with_status_0(capsys):
    for flag in ("--help", "-h"):
        assert main([flag]) == 0
        out, err = capsys.readouterr()
        assert "commands: generate, eval, serve" in out and err == ""


def test_an_unknown_or_missing_command_is_status_2_on_stderr(capsys):
    assert main(["bogus"]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and lines[0] == "error: unknown command 'bogus'"
    assert lines[1].startswith("commands: generate, eval, serve") and len(lines) == 2
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "commands: generate" in err


def _help_examples(text: str) -> list[str]:
    """The `unmaskd ...` lines of the help, with backslash-continued lines joined."""
    examples, current = [], ""
    for line in text.splitlines():
        if current or line.strip().startswith("unmaskd "):
            current += line.strip()
            if current.endswith("\\"):
                current = current[:-1] + " "
                continue
            examples.append(current)
            current = ""
    return examples


def test_the_help_examples_paste_into_a_shell(capsys):
    """A sweep's `|` unquoted is a shell pipe; and the example generate call runs as shown."""
    import shlex

    assert main(["--help"]) == 0
    examples = _help_examples(capsys.readouterr().out)
    assert [e.split()[1] for e in examples] == ["generate", "eval", "serve"]
    for example in examples:
        lexer = shlex.shlex(example, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        assert not any(set(word) <= set("|&;<>()") for word in lexer), example
    generate = shlex.split(examples[0])
    assert main(generate[1:] + ["--threads", "1"]) == 0
    assert "####" in capsys.readouterr().out


def test_serve_help_says_each_default_once_and_never_null(capsys):
    """pydantic-settings appends "(default: VALUE)" to every flag, "null" for None, after any
    default the description gives itself."""
    from unmaskd.server.settings import ServerSettings, parse_settings

    with pytest.raises(SystemExit) as exit_info:
        parse_settings(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    assert "null" not in text
    assert text.count("(default: ") == len(ServerSettings.model_fields)
    assert "--policies Path folder of learned unmasking policies (default: MODEL/policies)" in text
    assert "(default: config.json's)" in text


def test_the_cli_and_serve_take_the_same_model_flags(monkeypatch, capsys):
    """One declaration (ModelArgs) feeds both, so every model flag of `unmaskd generate` and
    `unmaskd eval` is a `serve` setting with the same default and the same allowed values, and
    both refuse what the other refuses; train-policy takes the same flags but --policies and
    --default-gen-length."""
    import argparse
    import os
    from typing import get_args

    from pydantic import ValidationError
    from unmaskd.engine.model_args import add_model_args
    from unmaskd.server.settings import ServerSettings, parse_settings
    from unmaskd.training.policy_trainer import parse_args as train_policy_args

    for var in [v for v in os.environ if v.startswith("UNMASKD_")]:
        monkeypatch.delenv(var)
    cli = argparse.ArgumentParser()
    add_model_args(cli)
    flags = {a.dest: a for a in cli._actions if a.option_strings != ["-h", "--help"]}
    assert set(flags) == {"model", "policies", "device", "dtype", "mask_token_id", "cache",
                          "default_gen_length", "threads"}
    server = parse_settings([])
    assert vars(cli.parse_args([])) == {name: getattr(server, name) for name in flags}
    for name, action in flags.items():
        assert action.option_strings == ["--" + name.replace("_", "-")]
        field = ServerSettings.model_fields[name]
        assert tuple(action.choices or ()) == (get_args(field.annotation) if action.choices
                                               else ()), name
        assert action.help == field.description, name
    for flag, value in [("--threads", "-1"), ("--mask-token-id", "-1"),
                        ("--default-gen-length", "0"), ("--dtype", "float8"),
                        ("--cache", "full")]:
        with pytest.raises(ValidationError):
            parse_settings([flag, value])
        with pytest.raises(SystemExit):
            cli.parse_args([flag, value])
    # ("embedded" is a shipped model's name: both look it up the same way)
    assert cli.parse_args(["--model", "embedded"]).model == parse_settings(
        ["--model", "embedded"]).model
    trained = vars(train_policy_args(["--out", "x"]))
    assert {n for n in flags if n in trained} == set(flags) - {"policies", "default_gen_length"}
    capsys.readouterr()
