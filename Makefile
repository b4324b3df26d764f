# Set-up and everyday commands. `make train` and `make test` create .venv on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCHREC := torchrec==1.8.0

.PHONY: setup train test test-quick lint format benchmark peers clean

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

# The benchmarks' peers, each in its own environment: myFM, scikit-surprise (which needs numpy<2), and
# implicit (iALS, for the ranking benchmark).
peers: .venv-myfm/.installed .venv-surprise/.installed .venv-implicit/.installed

.venv-myfm/.installed:
	$(PYTHON) -m venv .venv-myfm
	.venv-myfm/bin/python -m pip install -q --disable-pip-version-check "setuptools<81" myfm==0.4.0
	touch $@

.venv-surprise/.installed:
	$(PYTHON) -m venv .venv-surprise
	.venv-surprise/bin/python -m pip install -q --disable-pip-version-check "numpy<2" "pandas<3" scikit-surprise==1.1.5
	touch $@

.venv-implicit/.installed:
	$(PYTHON) -m venv .venv-implicit
	.venv-implicit/bin/python -m pip install -q --disable-pip-version-check implicit==0.7.3
	touch $@

clean:
	rm -rf $(VENV) .venv-myfm .venv-surprise .venv-implicit .pytest_cache .ruff_cache
