# Two entry points, as in the README: `make demo` (the main job on the embedded data) and `make test`.
# Each creates .venv if missing and installs what it needs. TORCH_SPEC pins the wheels on this
# project's machines; override it elsewhere (e.g. `make test TORCH_SPEC=torch`).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
RUN ?= runs/demo

.PHONY: install test demo lab bench docs browser clean-nbs

$(VENV)/.installed: settings.ini setup.py
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

# The report and docs tests render pages in headless Chromium (Debian's package; installed here when missing, as root).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || { echo "install Chromium (Debian: apt-get install chromium) for the browser tests"; exit 1; }

test: $(VENV)/.installed browser
	$(BIN)/pytest -q --durations=20 tests
	$(BIN)/nbdev_test --n_workers 2 --timing --flags slow

demo: $(VENV)/.installed
	$(BIN)/cxr-reproduce demo --out $(RUN)

# JupyterLab on the notebooks (the `lab` extra, part of `dev`); the kernel is this venv's `python3`.
lab: $(VENV)/.installed
	$(BIN)/jupyter lab nbs/

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_cache.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_cli.py

docs: $(VENV)/.installed
	$(PY) nbs/_site.py

clean-nbs: $(VENV)/.installed
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean
