# Two commands on a fresh machine: `make repro` (set up + whole pipeline), `make test` (set up + tests).
VENV   ?= .venv
BIN    := $(VENV)/bin
# The python that creates $(VENV): PYTHON=... if given, else the first of these that pyproject.toml's
# requires-python accepts (python3 first: whatever the machine calls python3, if it is new enough).
PYTHON ?=
PYTHON_CANDIDATES ?= python3 python3.11 python3.12 python3.13 python3.14
PYTHON_MIN := $(patsubst >=%,%,$(shell sed -n 's/^requires-python *= *"\(.*\)"/\1/p' pyproject.toml))
# The exact torch build. Here pip finds the CPU wheel of this release on local disk; on a GPU
# machine PyPI's Linux wheel of the same release is a CUDA build. For another CUDA version:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
# The pip that installs the locks: the one the dev lock pins (pip 25.3 today). The system's pip 23.2 fails on
# them once PyPI has a release newer than a pin that another package asks for with an extra (weasel needs
# smart-open[http]; smart-open 9.0.4 came out after the lock pinned 9.0.2): "In --require-hashes mode, all
# requirements must have their versions pinned". pip 25.3 resolves the pinned version.
PIP         ?= $(shell sed -n 's/^\(pip==[^ ]*\) .*/\1/p' requirements-dev.lock)
# The PATH make was started with: the python that creates the venv is looked up there, never in the venv.
SYSTEM_PATH := $(PATH)
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup python data repro test lint lock clean-venv dvc browser java
setup: $(BIN)/.installed

# Prints the python `make setup` would use; exits with one line naming what it found if none is new enough.
define find_python
found=; PATH='$(SYSTEM_PATH)'; for py in $(or $(PYTHON),$(PYTHON_CANDIDATES)); do \
  command -v "$$py" >/dev/null 2>&1 || continue; \
  v=$$("$$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue; \
  if printf '%s\n' "$(PYTHON_MIN)" "$$v" | sort -V -C; then echo "$$py"; exit 0; fi; \
  found="$${found:+$$found, }$$py is $$v"; \
done; \
echo "error: twinhead needs Python >=$(PYTHON_MIN) (requires-python, pyproject.toml) but $${found:-no python3 was found}: install one, or pass PYTHON=/path/to/python3.X" >&2; exit 1
endef

python:
	@$(find_python)

# torch first (see TORCH above), then every other dependency exactly as locked, hashes checked; the
# lock leaves torch out, so the build installed first is kept. Then this package, without deps.
$(BIN)/.installed: pyproject.toml requirements.lock requirements-dev.lock
	@test -x $(BIN)/python || { py=$$($(find_python)) && echo "$$py -m venv $(VENV)" && "$$py" -m venv $(VENV); }
	$(BIN)/python -m pip install -q "$(PIP)"
	$(BIN)/python -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/python -m pip install --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

data: setup
	dvc pull data/raw/snips.dvc data/raw/atis.dvc

repro: data
	dvc repro

# On every core (pytest-xdist), each test file on one worker: a module's fixtures (a trained bundle, the MLflow
# experiments of tests/test_mlflow_e2e.py) are built once. The files in collection order, which puts the slow
# end-to-end modules first (tests/conftest.py). PYTEST_ARGS= runs the suite in one process.
PYTEST_ARGS ?= -n auto --dist loadfile --no-loadscope-reorder
test: data browser java
	python -m pytest -q $(PYTEST_ARGS)

# Headless Chromium (Debian's package) for the tests that render HTML in a real browser.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium; }; }

# A Java runtime for the Spark tests (pyspark starts a JVM; Spark 4 needs Java 17 or newer): Debian's default
# headless JRE (OpenJDK 17 on Debian 12, 21 on Debian 13) unless `java -version` already works.
java:
	@java -version >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -qq --no-install-recommends default-jre-headless >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends default-jre-headless; }; }

# Any DVC command with the environment on PATH (stage commands call `python` from PATH):
#   make dvc ARGS="exp run -S train.lr=3e-4"      make dvc ARGS="queue start -j 1"
dvc: setup
	dvc $(ARGS)

lint: setup
	ruff check src stages tests benchmarks

# Regenerate the hashed locks from pyproject.toml: requirements.lock (core + [pipeline]) and
# requirements-dev.lock (+ [dev], the runtime pins kept). Pins already in a lock are kept unless
# pyproject.toml no longer allows them (LOCK_FLAGS=--upgrade moves everything to the newest). torch
# is left out of both (see TORCH); its dependencies are resolved against the CPU build so that no
# CUDA package gets into the locks: pip must find $(LOCK_TORCH) (here: on local disk; elsewhere
# LOCK_TORCH_INDEX=https://download.pytorch.org/whl/cpu).
LOCK_TORCH       ?= $(TORCH)+cpu
LOCK_TORCH_INDEX ?=
LOCK_FLAGS       ?=
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes --strip-extras \
	--unsafe-package torch --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	$(if $(LOCK_TORCH_INDEX),--extra-index-url $(LOCK_TORCH_INDEX)) -c $(VENV)/torch-lock.txt $(LOCK_FLAGS)
lock: setup
	echo "$(LOCK_TORCH)" > $(VENV)/torch-lock.txt
	# seqeval's sdist fetches setuptools_scm as an egg through setup_requires; 10.x fails there (no module
	# vcs_versioning), an installed 9.x satisfies it
	$(BIN)/python -m pip install --quiet "setuptools-scm<10"
	$(PIP_COMPILE) --extra pipeline -o requirements.lock pyproject.toml
	$(PIP_COMPILE) --extra pipeline --extra dev -c requirements.lock -o requirements-dev.lock pyproject.toml

clean-venv:
	rm -rf $(VENV)
