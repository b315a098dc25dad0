# The README's two commands: `make serve` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/unmaskd: pyproject.toml
	$(PY) -m venv $(VENV)
	# The CPU wheel on disk; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/unmaskd

# The SGLang plug-in (engine/sglang_plugin/) is tested against the real sglang package, in an
# environment of its own: sglang 0.5.23 imports torchvision, whose PyPI build needs torch 2.14.1
# (a CUDA build that imports without a GPU), not the main venv's torch 2.13.0 CPU build. sglang
# goes in without its dependencies (CUDA kernels, flashinfer, ...): these are the packages its
# algorithm and plug-in modules import, pinned where sglang pins them. About 6 GB.
SGL_VENV := .venv-sglang
SGL := $(SGL_VENV)/bin
SGLANG_IMPORTS := transformers==5.19.0 tokenizers==0.23.2 apache-tvm-ffi==0.1.11 \
	compressed-tensors==0.18.0 sentencepiece==0.2.1 openai==2.8.0 aiohttp dill einops gguf \
	ipython msgspec orjson partial-json-parser pillow psutil pybase64 pyzmq requests

$(SGL)/.built: pyproject.toml
	$(PY) -m venv $(SGL_VENV)
	$(SGL)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(SGL)/pip install -q --no-deps sglang==0.5.23
	$(SGL)/pip install -q $(SGLANG_IMPORTS) "pytest>=8" "pytest-timeout>=2.3" "httpx>=0.27"
	$(SGL)/pip install -q -e .
	touch $@

sglang-env: $(SGL)/.built

serve: install
	$(BIN)/unmaskd serve

# Debian's prometheus and docker-compose for the deploy tests (needs root, as in CI).
test-deps:
	bash .ci/deps.sh

test: install test-deps sglang-env
	$(BIN)/ruff check .
	# Two workers, one per core (each test runs torch on one thread); a file stays on one
	# worker so its module fixtures (servers, models) are built once.
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

.PHONY: install serve sglang-env test test-deps
