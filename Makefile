# Two commands on a fresh machine: `make repro` (set up + whole pipeline), `make test` (set up + tests).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# The exact torch build. Here pip finds the CPU wheel of this release on local disk; on a GPU
# machine PyPI's Linux wheel of the same release is a CUDA build. For another CUDA version:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup data repro test lint lock clean-venv dvc browser
setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/python -m pip install -r requirements.lock -e ".[dev]"
	touch $@

data: setup
	dvc pull data/raw/snips.dvc data/raw/atis.dvc

repro: data
	dvc repro

test: data browser
	python -m pytest -q

# Headless Chromium (Debian's package) for the tests that render HTML in a real browser.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium; }; }

# Any DVC command with the environment on PATH (stage commands call `python` from PATH):
#   make dvc ARGS="exp run -S train.lr=3e-4"      make dvc ARGS="queue start -j 1"
dvc: setup
	dvc $(ARGS)

lint: setup
	ruff check src stages tests

# Refresh requirements.lock from the venv (torch is pinned above, not in the lock).
lock: setup
	{ echo '# Exact versions of every dependency (torch excepted: see the Makefile), from `make lock`.'; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -i '^torch=='; } > requirements.lock

clean-venv:
	rm -rf $(VENV)
