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

serve: install
	$(BIN)/unmaskd serve

# Debian's prometheus and docker-compose for the deploy tests (needs root, as in CI).
test-deps:
	bash .ci/deps.sh

test: install test-deps
	$(BIN)/ruff check .
	# Two workers, one per core (each test runs torch on one thread); a file stays on one
	# worker so its module fixtures (servers, models) are built once.
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

.PHONY: install serve test test-deps
