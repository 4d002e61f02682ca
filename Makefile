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

# The end-to-end demo (search -> derive -> train -> evaluate) lands with the
# pipeline issue; until then `make demo` makes and builds the synthetic default
# dataset, and describes the paper search space and the DARTS_V2 network.
demo: $(STAMP)
	mkdir -p runs/demo
	test -d runs/demo/data || $(BIN)/dlsjax data synth --out runs/demo/data
	test -d runs/demo/data_built || $(BIN)/dlsjax data build --manual-dir runs/demo/data --data-dir runs/demo/data_built
	$(BIN)/dlsjax data info --data-dir runs/demo/data_built | tee runs/demo/data_info.txt
	$(BIN)/dlsjax describe --search-space paper --no-compile | tee runs/demo/search_space.txt
	$(BIN)/dlsjax describe --preset darts_v2 --no-compile | tee runs/demo/darts_v2.txt

clean:
	rm -rf $(VENV) .cache runs
