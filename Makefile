# One task runner for people and CI. `make demo` and `make test` are the README's commands.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo install dev format lint test test-rust bench clean fuzz fuzz-cmin soak

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# A release build of the package (the native core is speed-sensitive).
install: $(PY)
	$(PY) -m pip install --quiet .

# The package plus everything the tests, benchmarks and linters need; rebuilt only when
# a source changed since the last install.
SOURCES := $(shell find rust python -type f -not -path '*/__pycache__/*' -not -path 'rust/fuzz/*') \
	Cargo.toml pyproject.toml
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

# Then the fuzz corpus again, with overflow checks and debug assertions (docs/fuzzing.md).
test-rust:
	cargo test --workspace --release
	cargo test -p opsims-core --test fuzz_corpus

test: dev
	$(VENV)/bin/pytest

bench: dev
	$(VENV)/bin/pytest benchmarks --benchmark-only -p no:cacheprovider -s

# One hour at 10 M events/s with link drops, judged against the simulator's truth
# (docs/daemon.md, "Soak"); SOAK_OUT must be a new or empty directory.
SOAK_OUT ?= soak-out
soak: dev
	$(PY) benchmarks/soak.py --duration 3600 --rate 10e6 --out $(SOAK_OUT)

# Coverage-guided fuzzing of the native core: nightly Rust and cargo-fuzz (`cargo install
# cargo-fuzz`), never in CI, which replays the committed corpus in `make test-rust`.
# New inputs go to rust/fuzz/work/; `make fuzz-cmin` then folds them into the corpus.
FUZZ_TARGETS := link_stream tttr_records ptu_header potentiostat_wire journal_segment
FUZZ_TIME ?= 60
FUZZ_RUN := cargo +nightly fuzz run --fuzz-dir rust/fuzz

fuzz: dev
	$(PY) rust/fuzz/seeds.py rust/fuzz/work/seeds
	for t in $(FUZZ_TARGETS); do \
		mkdir -p rust/fuzz/work/$$t && \
		$(FUZZ_RUN) $$t rust/fuzz/work/$$t rust/fuzz/corpus/$$t rust/fuzz/work/seeds/$$t -- \
			-max_total_time=$(FUZZ_TIME) -timeout=10 -rss_limit_mb=2048 -max_len=32768 || exit 1; \
	done

fuzz-cmin: dev
	cargo +nightly fuzz build --fuzz-dir rust/fuzz
	$(PY) rust/fuzz/cmin.py

clean:
	rm -rf $(VENV) target .pytest_cache .mypy_cache .ruff_cache .benchmarks
