"""`unmaskd train-dllm --task longform` (issue 19): the 256-token-canvas model's training runs,
resumes exactly, records its task, and `unmaskd eval` defaults to that task and canvas."""

import json
from pathlib import Path

import pytest
import torch
from unmaskd.cli.main import main as cli
from unmaskd.dllm.checkpoint import TASK_FILE, load_dllm, read_task_file
from unmaskd.tasks import arithmetic, longform
from unmaskd.training import dllm_trainer as train

TINY = ["--task", "longform", "--steps", "4", "--batch-size", "2", "--d-model", "32",
        "--n-layers", "1", "--pool", "16", "--val-every", "4", "--val-n", "2", "--warmup", "2",
        "--ckpt-every", "100", "--micro-batches", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, list]:
    """A straight 4-step run exported to a/export, and b: the same run stopped after 2 steps and
    resumed. The tokenizer trains on 2,000 problems per suite instead of 20,000 (speed only);
    the suites it was asked for are recorded."""
    root = tmp_path_factory.mktemp("long")
    suites: list = []
    real = train.train_tokenizer

    def fast_tokenizer(out_dir, splits):
        suites.append(list(splits))
        return real(out_dir, n_problems=2000, splits=splits)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "train_tokenizer", fast_tokenizer)
        train.main(["--out", str(root / "a"), "--export", str(root / "a/export")] + TINY)
        train.main(["--out", str(root / "b"), "--stop-at", "2"] + TINY)
        assert torch.load(root / "b/ckpt.pt", weights_only=True)["step"] == 2
        train.main(["--out", str(root / "b")] + TINY)
    return root, suites


def test_longform_run_resumes_exactly_with_both_suites_tokenizer(runs):
    root, suites = runs
    assert suites == [[arithmetic.make_split, longform.make_split]] * 2
    a, b = (torch.load(root / d / "ckpt.pt", weights_only=True) for d in "ab")
    assert a["step"] == b["step"] == 4 and a["task"] == b["task"] == "longform"
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    logs = [[json.loads(ln) for ln in (root / d / "log.jsonl").read_text().splitlines()]
            for d in "ab"]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]] and len(logs[0]) == 4
    # validated at the last step on longform's validation split at 1 token/step in blocks of 32
    assert logs[0][-1]["val_accuracy"] == logs[1][-1]["val_accuracy"]


def test_export_loads_and_records_task_and_canvas(runs):
    root, _ = runs
    model, _ = load_dllm(root / "a/export")
    assert model.config.max_sequence_length == 512  # the longest prompt (144) + 256, rounded
    assert read_task_file(root / "a/export") == {"task": "longform", "gen_length": 256,
                                                 "block_length": 32}
    config = json.loads((root / "a/export/config.json").read_text())
    assert "task" not in config  # config.json stays a plain LLaDA config


def test_resume_with_another_task_is_refused(runs):
    root, _ = runs
    with pytest.raises(SystemExit, match="--task longform"):
        train.main(["--out", str(root / "b")])  # the default task: arithmetic


def test_eval_defaults_to_the_folders_task_and_canvas(runs, tmp_path):
    model = str(runs[0] / "a/export")
    common = ["eval", "--model", model, "--split", "validation", "--n", "2",
              "--sampler", "topk_confidence:steps=8"]
    assert cli(common + ["--json", str(tmp_path / "own.json")]) == 0
    own = json.loads((tmp_path / "own.json").read_text())
    assert (own["task"], own["gen_length"], own["block_length"]) == ("longform", 256, 32)
    assert own["results"][0]["steps"] == 8
    # another task asked for: its problems at the engine's default canvas (no canvas recorded)
    assert cli(common + ["--task", "arithmetic", "--json", str(tmp_path / "other.json")]) == 0
    other = json.loads((tmp_path / "other.json").read_text())
    assert (other["task"], other["gen_length"], other["block_length"]) == ("arithmetic", None,
                                                                           None)


def test_malformed_task_file_is_refused_naming_it(runs, tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    for f in (runs[0] / "a/export").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / TASK_FILE).write_text('{"task": "poetry", "gen_length": 256, "block_length": 32}')
    # an unknown task: refused where eval looks its suite up, before any problem: one line
    assert cli(["eval", "--model", str(folder), "--n", "1", "--sampler", "topk_confidence"]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert TASK_FILE in line and "task: 'poetry' is not a known task" in line
    (folder / TASK_FILE).write_text('{"task": "longform", "gen_length": "256", "block_length": 32}')
    with pytest.raises(SystemExit) as stop:  # malformed: refused as the model loads, status 2
        cli(["eval", "--model", str(folder), "--n", "1", "--sampler", "topk_confidence"])
    assert stop.value.code == 2 and TASK_FILE in capsys.readouterr().err


def test_arithmetic_defaults_are_unchanged():
    args = train.parse_args([])
    assert (args.task, args.steps, args.batch_size, args.d_model, args.n_layers, args.val_every,
            args.val_n, args.pool, args.micro_batches) == (
        "arithmetic", 5600, 128, 192, 4, 800, 200, 100_000, 4)
    setup = train.SETUPS["arithmetic"]
    assert (setup.gen_length, setup.block_length, setup.max_sequence_length) == (48, 12, 128)
    long = train.parse_args(["--task", "longform", "--steps", "7"])
    assert long.steps == 7 and long.batch_size == train.SETUPS["longform"].defaults["batch_size"]


def test_engine_generate_and_server_take_the_folders_canvas(runs, capsys):
    """A model trained for 256-token canvases in blocks of 32 decodes that way when a request
    names no canvas: the engine, `unmaskd generate` and the server's /samplers (which fills the
    playground's form); a canvas the block does not divide falls back to L/4."""
    from fastapi.testclient import TestClient
    from unmaskd.engine.loop import Engine
    from unmaskd.engine.sequence import GenerationRequest
    from unmaskd.server.app import create_app
    from unmaskd.server.settings import ServerSettings

    folder = runs[0] / "a/export"
    engine = Engine.from_dir(folder)
    assert engine.default_canvas() == (256, 32)
    vr = engine.validate(GenerationRequest([1], gen_length=96))
    assert (vr.gen_length, vr.block_length) == (96, 32)
    assert engine.validate(GenerationRequest([1], gen_length=40)).block_length == 10
    assert Engine.from_dir(folder, default_gen_length=64).default_canvas() == (64, 32)
    assert cli(["generate", "--model", str(folder), "--prompt", "Question: x", "--steps", "8",
                "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["token_ids"]) == 256 and out["nfe"] == 8
    with TestClient(create_app(ServerSettings(model=folder), engine)) as client:
        body = client.get("/samplers").json()
    assert body["canvas"] == {"gen_length": 256, "block_length": 32}


def test_train_policy_takes_the_folders_task_and_canvas(runs, tmp_path):
    from unmaskd.training import policy_trainer

    out = tmp_path / "p"
    policy_trainer.train(["--model", str(runs[0] / "a/export"), "--out", str(out),
                          "--iterations", "1", "--group-size", "2", "--prompts-per-step", "1"])
    meta = json.loads((out / "policy/policy.json").read_text())
    assert (meta["gen_length"], meta["block_length"]) == (256, 32)
    assert meta["training"]["data"] == "tasks.longform train split"
    with pytest.raises(SystemExit, match="--task longform \\(now arithmetic\\)"):  # resumed
        policy_trainer.train(["--model", str(runs[0] / "a/export"), "--out", str(out),
                              "--iterations", "2", "--group-size", "2", "--prompts-per-step",
                              "1", "--task", "arithmetic"])


def test_init_starts_from_a_model_folders_weights_and_tokenizer(tiny_model_dir, tmp_path):
    """--init: the long model may start from the embedded one. Its weights (lr 0 keeps them),
    architecture and tokenizer carry over, the context grows to the task's; a resume from
    another starting point is refused."""
    from safetensors.torch import load_file

    run = ["--task", "longform", "--init", str(tiny_model_dir), "--steps", "2", "--lr", "0",
           "--batch-size", "2", "--pool", "16", "--val-every", "0", "--micro-batches", "1"]
    train.main(run + ["--out", str(tmp_path / "ft"), "--export", str(tmp_path / "ft/export")])
    export = tmp_path / "ft/export"
    before, after = (load_file(str(d / "model.safetensors")) for d in (tiny_model_dir, export))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert (export / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json"
                                                         ).read_bytes()
    config = json.loads((export / "config.json").read_text())
    assert config["max_sequence_length"] == 512 and config["d_model"] == 32
    assert read_task_file(export)["task"] == "longform"
    with pytest.raises(SystemExit, match="--init"):
        train.main(run[:2] + ["--steps", "3", "--out", str(tmp_path / "ft")])
