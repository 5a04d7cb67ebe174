# Fresh machine: `make demo` (set up + end-to-end demo) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-installed
TEST_STAMP := $(VENV)/.stamp-test
ASTEROID := asteroid==0.7.0

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Test extras: pytest, ruff and the reference implementations the agreement tests run (nnU-Net, dcm2niix, Asteroid).
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,peers,vector,tables]"
	$(BIN)/python -m pip install --quiet --no-deps $(ASTEROID)
	touch $(TEST_STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/convsuite demo -o demo_output --overwrite

test: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/vulture  # dead code; paths, confidence and ignores in pyproject.toml [tool.vulture]
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	for s in benchmarks/*.py; do echo "== $$s"; $(BIN)/python $$s || exit 1; done

clean:
	rm -rf $(VENV) demo_output
