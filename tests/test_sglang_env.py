"""tests/test_sglang_plugin.py in the environment it needs: sglang 0.5.23 and torch 2.14.1 live
in .venv-sglang (`make sglang-env`), apart from this suite's torch 2.13.0. `make test` builds it,
so there this runs; anywhere it was not built, it is skipped saying so."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PYTHON = ROOT / ".venv-sglang" / "bin" / "python"
BUILT = PYTHON.parent / ".built"  # the Makefile's mark of a finished build


@pytest.mark.timeout(900)
def test_sglang_plugin_in_its_environment():
    if not BUILT.exists():
        pytest.skip(".venv-sglang was not built (`make sglang-env`; `make test` builds it)")
    # -P: the repository root stays off sys.path, where ./kernels would shadow a module sglang
    # imports (Hugging Face's `kernels`)
    proc = subprocess.run([str(PYTHON), "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_sglang_plugin.py"], cwd=ROOT, capture_output=True,
                          text=True, timeout=840)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1] and "skipped" not in proc.stdout
