# make run   - the default experiment end to end (config/config.yaml)
# make test  - the whole test suite
# make bench - the benchmark scripts in benchmarks/
# make clean - remove results/ and Snakemake's state (reports/ is evidence: kept)

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(PY):
	python3 -m venv $(VENV)

# Reinstall only when pyproject.toml changed (torch is pinned there: a CPU wheel from local disk).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[test]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/snakemake --profile profiles/local
	@echo "Results: results/<experiment>/, run index: reports/latest/index.md"

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	for script in benchmarks/*.py; do $(PY) "$$script" || exit 1; done

clean:
	rm -rf results .snakemake report.html
