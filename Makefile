# Every target installs what it needs into .venv first, so each one works on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WEIGHTS_DIR ?= $(HOME)/.cache/vace/weights
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install demo test serve bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	if [ -f tests/js/package.json ]; then cd tests/js && npm ci --no-audit --no-fund --loglevel=error; fi
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vace demo --weights-dir tiny-weights --out out

# The suite needs real engines: Chromium (the playground's browser test) and PostgreSQL's server binaries (the shared
# job store; the tests make their own throw-away cluster). Installed here where we can (root with apt-get); otherwise
# the tests that need them say what to install and skip (in CI, CI=true, they fail instead).
ENGINES := $(if $(wildcard /usr/bin/chromium),,chromium) $(if $(wildcard /usr/lib/postgresql/*/bin/pg_ctl),,postgresql)

test: $(STAMP)
	@if [ -n "$(strip $(ENGINES))" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$(ENGINES) >/dev/null; fi
	$(PY) -m pytest -q

serve: $(STAMP)
	$(VENV)/bin/vace serve --weights-dir $(WEIGHTS_DIR) --host $(HOST) --port $(PORT)

bench: $(STAMP)
	$(PY) bench/generate_overhead.py

clean:
	rm -rf $(VENV) tiny-weights out .pytest_cache
