# dlsjax: `make test` and `make demo` work on a fresh machine with Python 3.11 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check dlsjax tests benchmarks
	$(BIN)/ruff format --check dlsjax tests benchmarks

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15

# The end-to-end demo: synthesise the default dataset, build it, search (first
# order), derive with MPDS, train, evaluate, Grad-CAM, predict; writes
# runs/demo/report.md. Finished stages are kept when it is run again.
demo: $(STAMP)
	$(BIN)/dlsjax demo --workdir runs/demo

clean:
	rm -rf $(VENV) .cache runs
