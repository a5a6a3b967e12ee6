# Two commands for a fresh machine: `make demo` and `make test`.
# Both (re)create .venv when it is missing or older than pyproject.toml.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON3 ?= python3
STAMP := $(VENV)/.installed

# No network at run time: fail fast instead of hanging on hub/update checks.
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg
export PYTHONUNBUFFERED := 1

# `make demo DATA=path/to/folder` runs the pipeline on your own data; SIZE=small for a quicker run.
DATA ?=
SIZE ?= default

.PHONY: venv test test-fast demo bench figures clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	@touch $(STAMP)

# The suite runs on every core (pytest-xdist; a file's tests stay in one process, so module fixtures are built once).
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n auto --dist loadfile

# Skip the tests marked slow (they still run in `make test` and CI).
test-fast: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow"

demo: $(STAMP)
	$(PY) -m cellemnet.demo --out demo_out --size $(SIZE) $(if $(DATA),--data $(DATA),)

bench: $(STAMP)
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

figures: $(STAMP)
	$(PY) images/make_figures.py

clean:
	rm -rf demo_out .pytest_cache
