# quantum-ops: every entry point an operator or CI needs. Each target installs what it needs first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ACTIVATE := source $(VENV)/bin/activate

.PHONY: bootstrap test test-unit lint deploy run bench bench-quick lab-up lab-down clean

bootstrap:
	@scripts/bootstrap.sh

## The whole suite: lint, unit/integration tests against a real redis-server, the lab and molecule, bench smoke.
test: bootstrap
	$(ACTIVATE) && python -m pytest -q tests

## Only the tests that need no lab host (fast loop while developing).
test-unit: bootstrap
	$(ACTIVATE) && python -m pytest -q tests -m "not lab"

## Local demo without the lab: a private redis-server, demo intents from the bridge, the service, the outcome.
run: bootstrap
	$(ACTIVATE) && python scripts/demo.py

## Benchmark (bench/README.md): backlog drain and execution throughput against the raw Redis floor; writes
## bench/results.json. The quick size is the CI smoke (well under 2 minutes); its results go to bench/out/.
bench: bootstrap
	$(ACTIVATE) && python bench/run.py

bench-quick: bootstrap
	$(ACTIVATE) && python bench/run.py --quick

clean:
	rm -rf $(VENV) .pytest_cache
