# Set-up and everyday commands. `make train` and `make test` create .venv on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCHREC := torchrec==1.8.0

.PHONY: setup train test test-quick lint format benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements-cpu.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps $(TORCHREC)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

train: setup
	$(BIN)/dlrm train

test: setup
	$(BIN)/pytest -q
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-quick: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
