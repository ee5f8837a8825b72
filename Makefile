# One command per habit. Each target creates/updates the project's own .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip -q --disable-pip-version-check
# the versions the tests last passed with (make lock renews them)
PINS   := -c constraints.txt

.PHONY: demo test test-fast lint bench lab lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip

$(VENV)/.core: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install $(PINS) -e .
	touch $@

$(VENV)/.dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install $(PINS) -e '.[dev]'
	touch $@ $(VENV)/.core

demo: $(VENV)/.core           ## run the demo pipeline on threads: routing and buffer load
	$(BIN)/sage-nb demo

test: $(VENV)/.dev            ## every test: unit, doctests, notebooks (real kernels), Ray, browser
	bash scripts/ensure_chromium.sh
	$(BIN)/python -m pytest --doctest-modules --nbmake --nbmake-timeout=300 sage_nb tests notebooks

test-fast: $(VENV)/.dev       ## unit tests and doctests only
	$(BIN)/python -m pytest --doctest-modules -m "not ray and not browser and not slow" sage_nb tests

lint: $(VENV)/.dev
	$(BIN)/ruff check sage_nb tests benchmarks
	$(BIN)/mypy

$(VENV)/.bench: pyproject.toml constraints.txt | $(VENV)/.dev
	$(PIP) install $(PINS) -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench         ## throughput/latency against the raw references and the peers; then Ray's
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/bench_ray.py

lab: $(VENV)/.dev             ## open the course in JupyterLab
	$(BIN)/jupyter lab notebooks/

lock:                         ## re-resolve the newest versions pyproject allows into constraints.txt
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip -q --disable-pip-version-check install -e '.[dev,bench]'
	{ sed -n '1,2p' constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

clean:
	rm -rf $(VENV) build .pytest_cache
