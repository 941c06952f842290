# One task runner for people and CI. `make demo` and `make test` are the README's commands.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo install dev format lint test test-rust bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# A release build of the package (the native core is speed-sensitive).
install: $(PY)
	$(PY) -m pip install --quiet .

# The package plus everything the tests, benchmarks and linters need; rebuilt only when
# a source changed since the last install.
SOURCES := $(shell find rust python -type f -not -path '*/__pycache__/*') Cargo.toml pyproject.toml
STAMP := $(VENV)/.opsims-dev

dev: $(STAMP)

$(STAMP): $(PY) $(SOURCES)
	$(PY) -m pip install --quiet '.[test,bench,lint]'
	touch $@

demo: install
	$(VENV)/bin/opsims demo --config config/opsimsd.toml

format:
	cargo fmt --all
	$(VENV)/bin/ruff format python tests benchmarks examples
	$(VENV)/bin/ruff check --fix python tests benchmarks examples

lint: dev
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks examples
	$(VENV)/bin/ruff format --check python tests benchmarks examples
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest opsims._native

test-rust:
	cargo test --workspace --release

test: dev
	$(VENV)/bin/pytest

bench: dev
	$(VENV)/bin/pytest benchmarks --benchmark-only -p no:cacheprovider -s

clean:
	rm -rf $(VENV) target .pytest_cache .mypy_cache .ruff_cache .benchmarks
