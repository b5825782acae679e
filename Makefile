# Every target installs what it needs into .venv first, so each one works on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
WEIGHTS_DIR ?= $(HOME)/.cache/vace/weights
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install demo test lint format serve bench clean

# The versions in uv.lock, exactly (--locked: a pyproject.toml change without `uv lock` fails here, not later). uv
# itself comes from PyPI with the venv's pip; --inexact leaves it, pip and what was added by hand in place.
# Without uv: `.venv/bin/pip install -e ".[test,dev]"` resolves the same requirements anew.
$(STAMP): pyproject.toml uv.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install -q "uv>=0.13,<0.14"
	$(UV) sync --locked --inexact --extra test --extra dev
	if [ -f tests/js/package.json ]; then cd tests/js && npm ci --no-audit --no-fund --loglevel=error; fi
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vace demo --weights-dir tiny-weights --out out

# The suite needs real engines: Chromium (the playground's browser test) and PostgreSQL's server binaries (the shared
# job store; the tests make their own throw-away cluster). Installed here where we can (root with apt-get); otherwise
# the tests that need them say what to install and skip (in CI, CI=true, they fail instead).
ENGINES := $(if $(wildcard /usr/bin/chromium),,chromium) $(if $(wildcard /usr/lib/postgresql/*/bin/pg_ctl),,postgresql)

# Two pytest workers keep two cores busy: most tests wait on a child process (a server, a CLI run, a worker) that
# runs one torch thread. The `serial` tests (deadlines, latencies) run afterwards on an otherwise idle machine.
TEST_WORKERS ?= 2

test: $(STAMP)
	@if [ -n "$(strip $(ENGINES))" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$(ENGINES) >/dev/null; fi
	status=0; \
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not serial" || status=$$?; \
	$(PY) -m pytest -q -m serial || status=$$?; \
	exit $$status

# Lint, import order, formatting and types; the rules are in pyproject.toml. CI runs this before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Rewrites the tree: the formatter, then the lint fixes ruff calls safe. What is left, `make lint` names.
format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

serve: $(STAMP)
	$(VENV)/bin/vace serve --weights-dir $(WEIGHTS_DIR) --host $(HOST) --port $(PORT)

bench: $(STAMP)
	$(PY) bench/generate_overhead.py

clean:
	rm -rf $(VENV) tiny-weights out .pytest_cache .mypy_cache .ruff_cache
