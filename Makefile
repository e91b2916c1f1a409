# make run   - the default experiment end to end (config/config.yaml)
# make test  - the whole test suite
# make test-fast - the quick tests only (pytest -m "not slow": no end-to-end runs), < 4 min
# make bench - the benchmarks and the method comparison: one table, benchmarks/runs/<UTC time>.json
# make iterative - install the optional iterative reference (pty-chi); make test and bench do
# make lint - rule files formatted (snakefmt) and linted (snakemake --lint; workflow/lint-allowed.yaml)
# make clean - remove results/ and Snakemake's state (reports/ is evidence: kept)

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ITERATIVE := $(VENV)/.installed-iterative
PTYCHI := ptychi==2.2.0

.PHONY: run test test-fast bench clean iterative lint

$(PY):
	python3 -m venv $(VENV)

# Reinstall only when pyproject.toml changed (torch is pinned there: a CPU wheel from local disk).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[test]'
	touch $@

# pty-chi: its dependencies (the `iterative` extra), then pty-chi itself with --no-deps, so pip
# installs no torchvision (see README, "Iterative reference"); torch stays pinned by pyproject.
$(ITERATIVE): $(STAMP)
	$(PY) -m pip install -e '.[test,iterative]'
	$(PY) -m pip install --no-deps '$(PTYCHI)'
	touch $@

iterative: $(ITERATIVE)

run: $(STAMP)
	$(VENV)/bin/snakemake --profile profiles/local
	@echo "Results: results/<experiment>/, run index: reports/latest/index.md"

test: $(ITERATIVE)
	$(PY) -m pytest -q

test-fast: $(ITERATIVE)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) workflow/scripts/check_style.py

bench: $(ITERATIVE)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf results .snakemake report.html
