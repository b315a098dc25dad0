"""Every command in README.md is run as written, so a README edit that breaks one fails here.

The commands are those of the README's shell code blocks (```bash, sh, shell, console; continued
lines and multi-line quoted arguments joined as a shell joins them), its ```python blocks, and
its inline code spans that start with a program (`unmaskd train-policy ...`, `docker compose
...`). Each is one test case. A command is run, checked another way, or classified as not
runnable with the reason; a command in a shell block that is none of these fails, so a new one
needs a rule here, not silence.

How they run, and the only changes made to them:

- `unmaskd ...` and `.venv/bin/unmaskd ...` both run the console script of the venv that runs
  the tests, with its arguments as written. They run in a scratch folder that links to the
  repository's top-level entries (inputs such as `tasks/samples/...` resolve; outputs such as
  `--out runs/...` land in the scratch folder; an output that would land in the repository
  fails before anything runs).
- `/models/NAME` (a real checkpoint folder, e.g. LLaDA-8B-Instruct) becomes a tiny random
  checkpoint built in tmp under the same folder name and in the family's folder layout. The
  LLaDA one (config.json + model.safetensors + tokenizer.json) has LLaDA-8B's vocabulary and
  embedding size (126,464, at d_model 8: 8 MB) and, as the README says of LLaDA-8B, no
  `mask_token_id` in its config: the README's `--mask-token-id 126336` is a real id of it and
  the folder does not load without it (test_llada_folder_needs_the_mask_flag).
- `--device cuda` becomes `--device cpu` only where CUDA is absent.
- `unmaskd serve ...` gets `--port` set to a free port (the README's 8000 may be taken); it is
  started, waited on until /health answers (its `--cache`, if given, must be the one /health
  reports), sent one short /generate, and stopped.
- Long-running commands get small settings appended, only those the README command does not
  set, none of which changes what the command exercises: `train-policy --iterations 1
  --prompts-per-step 1 --group-size 2`, `eval --n 2`, `train-dllm --steps 2 --batch-size 4
  --micro-batches 1 --pool 64 --val-n 4` (OVERRIDES).
- `curl localhost:8000/...` and the Python client run against `unmaskd serve` of the embedded
  model (what `make serve` serves) on a free port in place of 8000; curl must exit 0 with a
  body that is not an error (and an event stream must end with `data: [DONE]`).

Checked without running:

- `make serve` and `make test` (the README's two top commands): every `make` target must be a
  rule of the Makefile and `make -n` must resolve it, but neither is run from inside the test
  suite: `make test` runs this suite (it would recurse) and `make serve` blocks forever. `.ci/run`
  likewise is checked to be an executable that runs `make test`.
- `docker compose -f deploy/docker-compose.yml ...`: tests/test_deploy.py already validates
  that file with `docker-compose config` (test_compose_config; test_compose_gpu_profile for
  `--profile gpu`); here the command is checked to name that file and is skipped with the
  pointer. Starting the stack needs a Docker engine.
- Templates (`unmaskd serve [--model DIR] ...`: `...`, `[`, `<X>`, or an upper-case placeholder
  such as DIR, FILE, K outside quotes) are not runnable commands and are skipped, each with the
  placeholder that made it one (`pytest -rs` lists them).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from conftest import ServerProcess, free_port, start_server, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
UNMASKD = Path(sys.executable).parent / "unmaskd"  # the venv's console script
SHELL_FENCES = {"bash", "sh", "shell", "console"}
# Inline code spans are commands when their first word is one of these (the rest are flags,
# file names and identifiers in prose).
PROGRAMS = {"unmaskd", ".venv/bin/unmaskd", "curl", "make", "docker", "docker-compose",
            "torchrun", ".ci/run"}
UNMASKD_NAMES = {"unmaskd", ".venv/bin/unmaskd"}
README_SERVER = re.compile(r"(?:localhost|127\.0\.0\.1):8000")
MODELS_PATH = re.compile(r"/models/([^\s/'\"=]+)")
# Appended when absent: few, small iterations of the same code path.
OVERRIDES = {
    "train-policy": {"--iterations": "1", "--prompts-per-step": "1", "--group-size": "2"},
    "eval": {"--n": "2"},
    "train-dllm": {"--steps": "2", "--batch-size": "4", "--micro-batches": "1",
                   "--pool": "64", "--val-n": "4"},
}
OUTPUT_FLAGS = {"--out", "--export", "--json", "--plot"}  # `generate --json` takes no value
PROMPT = ("Question: Ava has 12 apples. Ava buys 7 more apples. How many apples does Ava have "
          "now?\nAnswer:")
# LLaDA-8B's vocabulary (= embedding size) and mask id (not in its config, the README says).
LLADA_8B_VOCAB, LLADA_8B_MASK = 126464, 126336


# ---- reading the README -------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    text: str  # as written; a shell command's continuation lines joined
    line: int  # where it starts in README.md
    kind: str  # "shell" (a shell code block), "inline" (a code span) or "python" (a block)

    def __str__(self) -> str:
        first = " ".join(self.text.split())
        return f"L{self.line} {first[:60]}"

    def words(self) -> list[str]:
        # A shell drops backslash-newline; shlex would keep the newline.
        return shlex.split(self.text.replace("\\\n", ""), comments=True)

    def key(self) -> str:
        """The command without comments and layout (the text if it does not parse)."""
        try:
            return self.text if self.kind == "python" else shlex.join(self.words())
        except ValueError:
            return self.text


def _shell_commands(lines: list[str], first: int) -> Iterator[tuple[str, int]]:
    """One (text, line) per command: a command ends at a line that neither ends in a backslash
    nor leaves a quote open (the README's curl bodies span lines inside single quotes)."""
    buf: list[str] = []
    start = first
    for n, line in enumerate(lines, first):
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not buf:
            start = n
        buf.append(line)
        text = "\n".join(buf)
        if line.rstrip().endswith("\\"):
            continue
        try:
            shlex.split(text, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        yield text, start
        buf = []
    if buf:  # unterminated: reported as such by the test that parses it
        yield "\n".join(buf), start


def readme_commands(text: str) -> list[Command]:
    commands: list[Command] = []
    lines = text.splitlines()
    fence: str | None = None
    body: list[str] = []
    body_start = 0
    for n, line in enumerate(lines, 1):
        opener = re.match(r"^\s*```\s*(\S*)", line)
        if fence is None and opener:
            fence, body, body_start = opener.group(1).lower(), [], n + 1
        elif fence is not None and opener and not opener.group(1):
            if fence in SHELL_FENCES:
                commands += [Command(t, s, "shell") for t, s in _shell_commands(body, body_start)]
            elif fence == "python":
                commands.append(Command("\n".join(body), body_start, "python"))
            fence = None
        elif fence is not None:
            body.append(line)
        else:
            for span in re.findall(r"`([^`\n]+)`", line):
                words = span.split()
                # A program's bare name in prose ("`torchrun` data parallelism") is a mention;
                # a script's path alone (`.ci/run`) is a command.
                if words[0] in PROGRAMS and (len(words) > 1 or "/" in words[0]):
                    commands.append(Command(span, n, "inline"))
    seen: set[str] = set()  # `make test` is both in a block and in the prose
    return [c for c in commands if not (c.key() in seen or seen.add(c.key()))]


COMMANDS = readme_commands(README.read_text())


# ---- classification -----------------------------------------------------------------------------
QUOTED = re.compile(r"'[^']*'|\"(?:\\.|[^\"\\])*\"")
PLACEHOLDER = re.compile(r"\.\.\.|…|\[|\]|<[^>\s]*>|(?<![\w$=./-])[A-Z][A-Z0-9_]*(?![\w=/])")


def unquoted(text: str) -> str:
    """The shell syntax of a command: quoted strings emptied, comments dropped."""
    return re.sub(r"(^|\s)#.*", "", QUOTED.sub("''", text), flags=re.M)


def placeholder(cmd: Command) -> str | None:
    """What makes a shell command a template, if anything (quoted text is data, not syntax:
    the README's `{"prompt": "..."}` is a real request body)."""
    text = unquoted(cmd.text.replace("\\|", "|"))
    for m in PLACEHOLDER.finditer(text):
        word = next(w.group(0) for w in re.finditer(r"\S+", text) if w.end() > m.start())
        if not (m.group(0)[0].isalpha() and (ROOT / word).exists()):  # README.md is a file
            return m.group(0)
    return None


def shell_features(cmd: Command) -> str | None:
    """Pipes, redirections, lists and expansions: commands are run as argument vectors, so
    these would not mean what they mean in a shell."""
    lexer = shlex.shlex(cmd.text.replace("\\\n", ""), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    operators = [t for t in lexer if t and set(t) <= set("|&;<>()")]
    if operators:
        return operators[0]
    # Double quotes do not stop expansions, so only single-quoted text is set aside.
    expandable = re.sub(r"(^|\s)#.*", "", re.sub(r"'[^']*'", "", cmd.text), flags=re.M)
    return next((c for c in "$`" if c in expandable), None)


def split_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """`A=1 B=2 prog ...` -> ({A: 1, B: 2}, [prog, ...])."""
    env: dict[str, str] = {}
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def set_flag(args: list[str], flag: str, value: str) -> list[str]:
    """`args` with `flag`'s value replaced, or the flag appended."""
    out = list(args)
    for i, a in enumerate(out):
        if a == flag and i + 1 < len(out):
            out[i + 1] = value
            return out
        if a.startswith(flag + "="):
            out[i] = f"{flag}={value}"
            return out
    return [*out, flag, value]


# ---- what the commands need ---------------------------------------------------------------------
def build_llada_8b_layout(out: Path) -> Path:
    """A random LLaDA checkpoint with LLaDA-8B's vocabulary and config conventions, tiny."""
    from tokenizers import Tokenizer
    from unmaskd.dllm import EMBEDDED_MODEL_DIR
    from unmaskd.dllm.checkpoint import save_dllm
    from unmaskd.dllm.llada import LLaDAConfig, LLaDAModel

    out.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(EMBEDDED_MODEL_DIR / name, out / name)
    eos = Tokenizer.from_file(str(out / "tokenizer.json")).token_to_id("<|endoftext|>")
    cfg = LLaDAConfig(d_model=8, n_layers=1, n_heads=2, mlp_hidden_size=16,
                      vocab_size=LLADA_8B_VOCAB, embedding_size=LLADA_8B_VOCAB,
                      max_sequence_length=4096, mask_token_id=LLADA_8B_MASK, eos_token_id=eos,
                      pad_token_id=eos)
    model = LLaDAModel(cfg)
    model.init_weights(std=0.5, seed=0)
    save_dllm(model, out)
    raw = json.loads((out / "config.json").read_text())
    del raw["mask_token_id"]  # as LLaDA-8B's: the README passes --mask-token-id
    raw["torch_dtype"] = "bfloat16"  # as LLaDA-8B's: --dtype auto picks it on CUDA
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    return out


def build_for(name: str, out: Path) -> Path:
    """A tiny random checkpoint for the real folder `/models/<name>`, in its family's layout."""
    low = name.lower()
    if "dream" in low or "diffucoder" in low:
        from test_dream import build_dream

        return build_dream(out)
    if "llada2" in low:
        from blockdiff_reference import build_tiny_llada2

        return build_tiny_llada2(out)
    if "sdar" in low:
        from blockdiff_reference import build_tiny_sdar

        return build_tiny_sdar(out)
    if "llada" in low:
        return build_llada_8b_layout(out)
    pytest.fail(f"/models/{name}: no tiny checkpoint for this family; add one to build_for")


class TinyModels:
    """`/models/<name>` -> a tiny checkpoint at tmp/models/<name>, built once per name."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> Path:
        out = self.root / name
        return out if out.exists() else build_for(name, out)

    def substitute(self, word: str) -> str:
        return MODELS_PATH.sub(lambda m: str(self.path(m.group(1))), word)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("readme") / "models")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch folder that links to the repository's entries, except `runs` (outputs)."""
    work = tmp_path_factory.mktemp("readme_cwd")
    for entry in ROOT.iterdir():
        if entry.name not in (".git", "runs"):
            (work / entry.name).symlink_to(entry)
    return work


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """`unmaskd serve` of the embedded model: what `make serve` starts, on a free port."""
    from unmaskd.dllm import EMBEDDED_MODEL_DIR

    server = start_server(EMBEDDED_MODEL_DIR, tmp_path_factory.mktemp("readme_server"))
    yield server
    server.stop(timeout=10)


def run_env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PATH": f"{UNMASKD.parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def adapt(args: list[str], models: TinyModels) -> list[str]:
    """The README's arguments with /models/... made tiny and CUDA made CPU where it is absent."""
    args = [models.substitute(a) for a in args]
    if not torch.cuda.is_available():
        device = flag_value(args, "--device")
        if device is not None and device.startswith("cuda"):
            args = set_flag(args, "--device", "cpu")
    return args


# ---- the test -----------------------------------------------------------------------------------
def test_readme_has_commands():
    """The extraction finds the commands (an empty list would pass everything below)."""
    keys = [c.key() for c in COMMANDS]
    assert "make serve" in keys and "make test" in keys
    assert any(c.kind == "python" for c in COMMANDS)
    assert sum(c.text.startswith("curl") for c in COMMANDS) >= 2


@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_readme_command(cmd: Command, request, tiny_models, workdir):
    if cmd.kind == "python":
        return run_python(cmd, request)
    hole = placeholder(cmd)
    if hole is not None:
        pytest.skip(f"{cmd}: a template ({hole!r} is a placeholder), not a runnable command")
    feature = shell_features(cmd)
    assert feature is None, (f"README.md:{cmd.line}: {cmd.text!r} uses {feature!r}; this test "
                             "runs plain commands only, teach it this one")
    env, words = split_env(cmd.words())
    assert words, f"README.md:{cmd.line}: an empty or unterminated command: {cmd.text!r}"
    prog = words[0]
    if prog in UNMASKD_NAMES:
        return run_unmaskd(cmd, words[1:], env, tiny_models, workdir)
    if prog == "curl":
        return run_curl(cmd, words[1:], request)
    if prog == "make":
        return check_make(cmd, words[1:])
    if prog == ".ci/run":
        return check_ci_run()
    if words[:2] == ["docker", "compose"] or prog == "docker-compose":
        return check_compose(cmd, words[2:] if prog == "docker" else words[1:])
    if words[:2] == ["pip", "install"]:
        return check_pip_extra(cmd, words[2:])
    if words[:2] == ["sglang", "serve"]:
        return check_sglang_serve(cmd, words[2:])
    pytest.fail(f"README.md:{cmd.line}: {cmd.text!r} is neither run nor classified by "
                f"tests/test_readme_commands.py; add a rule for {prog!r}")


def run_python(cmd: Command, request) -> None:
    code = cmd.text
    if README_SERVER.search(code):
        url = request.getfixturevalue("embedded_server").url
        code = README_SERVER.sub(url.removeprefix("http://"), code)
    # Raises on any error, an HTTP one included (the OpenAI client raises on non-2xx).
    exec(compile(code, f"README.md:{cmd.line}", "exec"), {"__name__": "__readme__"})


def run_unmaskd(cmd: Command, args: list[str], env: dict[str, str], models: TinyModels,
                workdir: Path) -> None:
    assert UNMASKD.is_file(), f"{UNMASKD}: the venv has no unmaskd console script"
    assert args, "`unmaskd` alone only prints its usage"
    sub, args = args[0], adapt(args[1:], models)
    env = {k: models.substitute(v) for k, v in env.items()}
    if sub == "serve":
        return run_serve(cmd, args, env, workdir)
    for flag, value in OVERRIDES.get(sub, {}).items():
        if flag_value(args, flag) is None:
            args += [flag, value]
    for i, a in enumerate(args[:-1]):
        out = args[i + 1]
        if a in OUTPUT_FLAGS and not out.startswith("-") and not Path(out).is_absolute():
            top = workdir / Path(out).parts[0]
            assert not top.is_symlink(), (f"README.md:{cmd.line}: {a} {out} would write into "
                                          "the repository; not run")
    argv = [str(UNMASKD), sub, *args]
    proc = subprocess.run(argv, cwd=workdir, env=run_env(env), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (f"README.md:{cmd.line}: {cmd.text}\nran: {shlex.join(argv)}\n"
                                  f"exit {proc.returncode}:\n{proc.stderr[-4000:]}")


def run_serve(cmd: Command, args: list[str], env: dict[str, str], workdir: Path) -> None:
    port = free_port()
    argv = [str(UNMASKD), "serve", *set_flag(args, "--port", str(port))]
    log_path = workdir / f"serve-{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                env=run_env(env))
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        try:
            wait_healthy(server)
        except RuntimeError as e:
            pytest.fail(f"README.md:{cmd.line}: {cmd.text}\nran: {shlex.join(argv)}\n{e}")
        cache = flag_value(args, "--cache") or env.get("UNMASKD_CACHE")
        if cache is not None:
            assert httpx.get(server.url + "/health").json()["cache"] == cache
        key = flag_value(args, "--api-key") or env.get("UNMASKD_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.post(server.url + "/generate", json={"prompt": PROMPT, "max_new_tokens": 8},
                       headers=headers, timeout=300)
        assert r.status_code == 200, (r.status_code, r.text, server.log()[-4000:])
        assert len(r.json()["token_ids"]) == 8
    finally:
        server.stop(timeout=10)


def run_curl(cmd: Command, args: list[str], request) -> None:
    exe = shutil.which("curl")
    if exe is None:
        pytest.skip("curl is not installed (test_server.py sends the same requests with httpx)")
    url = request.getfixturevalue("embedded_server").url.removeprefix("http://")
    argv = [exe, *(README_SERVER.sub(url, a) for a in args)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (cmd.text, proc.returncode, proc.stderr)
    out = proc.stdout.strip()
    if out.startswith("data:"):  # a server-sent event stream
        events = [ln.removeprefix("data: ") for ln in out.splitlines() if ln.startswith("data:")]
        assert events[-1] == "[DONE]", out[-2000:]
        for e in events[:-1]:
            assert "error" not in json.loads(e), e
    else:
        body = json.loads(out)
        assert not {"detail", "error", "errors"} & set(body), body
        if re.search(r"/generate\b", cmd.text):
            assert isinstance(body["text"], str)


def makefile_targets() -> set[str]:
    rules = re.findall(r"^([^\s#=:][^=:]*?)\s*::?(?!=)", (ROOT / "Makefile").read_text(), re.M)
    return {t for rule in rules for t in rule.split()}


def check_make(cmd: Command, args: list[str]) -> None:
    """A Makefile target, resolved by `make -n` (which prints the recipes and runs none); not
    run: `make test` runs this suite and `make serve` does not return."""
    targets = [a for a in args if not a.startswith("-") and "=" not in a]
    assert targets, cmd.text
    missing = set(targets) - makefile_targets()
    assert not missing, f"README.md:{cmd.line}: {cmd.text!r}: no Makefile rule for {missing}"
    if shutil.which("make"):
        proc = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr


def check_ci_run() -> None:
    """`.ci/run` is CI's entry point: `make test` (not run here, for the reason above)."""
    script = ROOT / ".ci" / "run"
    assert script.is_file() and os.access(script, os.X_OK)
    assert re.search(r"^make test$", script.read_text(), re.M)


def test_the_readme_names_every_package_make_test_installs():
    """`make test` runs .ci/deps.sh, which apt-installs packages (chromium among them): a
    newcomer running it as root should know what it puts on the machine."""
    installed = re.findall(r"need\+=\(([\w.-]+)\)", (ROOT / ".ci" / "deps.sh").read_text())
    assert installed, "no packages found in .ci/deps.sh"
    readme = README.read_text()
    assert ".ci/deps.sh" in readme
    assert not [name for name in installed if f"`{name}`" not in readme]


def check_compose(cmd: Command, args: list[str]) -> None:
    compose_file = flag_value(args, "-f") or flag_value(args, "--file")
    assert compose_file is not None, f"README.md:{cmd.line}: {cmd.text!r} names no -f file"
    deploy_tests = (ROOT / "tests" / "test_deploy.py").read_text()
    assert (ROOT / compose_file).resolve() == ROOT / "deploy" / "docker-compose.yml", (
        f"README.md:{cmd.line}: {compose_file} is not the file tests/test_deploy.py validates")
    profile = flag_value(args, "--profile")
    check = f"test_compose_{profile}_profile" if profile else "test_compose_config"
    assert f"def {check}(" in deploy_tests, f"tests/test_deploy.py has no {check}"
    pytest.skip(f"{cmd}: validated by tests/test_deploy.py::{check} (`docker-compose config` of "
                "the same file); starting the stack needs a Docker engine")


def check_pip_extra(cmd: Command, args: list[str]) -> None:
    """`pip install 'unmaskd[EXTRA]'`: the extra is pyproject.toml's (installing it fetches
    sglang's CUDA stack; `make sglang-env` installs what its tests need)."""
    import tomllib

    (spec,) = args
    m = re.fullmatch(r"unmaskd\[(\w+)\]", spec)
    assert m, f"README.md:{cmd.line}: {cmd.text!r}: only unmaskd's extras are checked here"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert m.group(1) in extras, f"README.md:{cmd.line}: pyproject.toml has no extra {spec}"
    pytest.skip(f"{cmd}: the extra exists; installing it fetches sglang's CUDA dependencies")


def check_sglang_serve(cmd: Command, args: list[str]) -> None:
    """`sglang serve ... --dllm-algorithm NAME`: NAME is one the plug-in registers; serving
    needs a GPU, so tests/test_sglang_plugin.py runs the algorithms in SGLang's loop instead."""
    from unmaskd.engine.sglang_plugin import ALGORITHM_NAMES

    algorithm = flag_value(args, "--dllm-algorithm")
    assert algorithm in ALGORITHM_NAMES, f"README.md:{cmd.line}: {algorithm!r}"
    assert flag_value(args, "--model-path") is not None, cmd.text
    pytest.skip(f"{cmd}: needs SGLang on a GPU (tests/test_sglang_plugin.py runs the "
                "algorithm in SGLang's own loop on CPU)")


def test_llada_folder_needs_the_mask_flag(tiny_models):
    """The tiny /models/LLaDA-8B-Instruct is refused without --mask-token-id, as LLaDA-8B is,
    and 126336 is a token id of it, so the README's flag does real work in the runs above."""
    from unmaskd.dllm.backend import ConfigError
    from unmaskd.dllm.checkpoint import read_config
    from unmaskd.dllm.llada import LLaDAConfig

    raw = read_config(tiny_models.path("LLaDA-8B-Instruct"))
    with pytest.raises(ConfigError, match="--mask-token-id 126336"):
        LLaDAConfig.from_dict(raw)
    cfg = LLaDAConfig.from_dict(raw, mask_token_id=LLADA_8B_MASK)
    assert cfg.mask_token_id < cfg.vocab_size == cfg.embedding_size == LLADA_8B_VOCAB
