# quantum-ops: every entry point an operator or CI needs. Each target installs what it needs first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ACTIVATE := source $(VENV)/bin/activate

## LAB selects the lab that lab-up, lab-down, deploy, ramp and rollback act on:
##   LAB=single (default)  inventory/lab: one host (qlab1) running Redis, the AI engine and the execution service
##   LAB=fleet             inventory/lab-fleet: three Redis hosts with Sentinel, an AI-engine host and two execution
##                         hosts on one bridge
## e.g. `make deploy LAB=fleet`, `make lab-down LAB=fleet`.
LAB ?= single
LAB_INVENTORIES := single=inventory/lab fleet=inventory/lab-fleet
INVENTORY := $(patsubst $(LAB)=%,%,$(filter $(LAB)=%,$(LAB_INVENTORIES)))
ifeq ($(INVENTORY),)
$(error LAB=$(LAB) is not a lab: use LAB=single (default) or LAB=fleet)
endif
PLAYBOOK := ansible-playbook -i ../$(INVENTORY)

.PHONY: bootstrap test test-all test-unit lint deploy ramp rollback run bench bench-quick lab-up lab-down clean

bootstrap:
	@scripts/bootstrap.sh

## The suite CI gates on (scripts/test.sh): the gated lab modules side by side with the checks that measure no rate
## or time, then the service, chaos, proof and Sentinel tests against real redis-servers and the bench smoke, alone.
test: bootstrap
	$(ACTIVATE) && scripts/test.sh

## make test plus the slower lab modules (Sentinel on five hosts, observability, life cycles, molecule, the ramp).
test-all: bootstrap
	$(ACTIVATE) && QUANTUM_TEST_ALL=1 scripts/test.sh

## Only the tests that need no lab host (fast loop while developing).
test-unit: bootstrap
	$(ACTIVATE) && python -m pytest -q tests -m "not lab"

## Lint the deployment code: yamllint and ansible-lint (production profile) over ansible/, inventory/, molecule/.
lint: bootstrap
	$(ACTIVATE) && yamllint -s . && ansible-lint --profile production

## The local lab hosts of $(LAB) (ansible/lab.yml): built if absent (root filesystem cached), reused if running,
## booted again with their state if stopped, rebuilt if damaged. lab-down removes every trace of them.
lab-up: bootstrap
	$(ACTIVATE) && cd ansible && $(PLAYBOOK) lab.yml

lab-down: bootstrap
	$(ACTIVATE) && cd ansible && $(PLAYBOOK) lab_destroy.yml

## Deploy to the local lab: lab up, ansible/deploy.yml, then what was deployed and the proof (ansible/status.yml).
deploy: lab-up
	$(ACTIVATE) && cd ansible && $(PLAYBOOK) deploy.yml && $(PLAYBOOK) status.yml

## Ramp the lab to a phase (PHASE=1..5) or show it (PHASE=status): ansible/ramp.yml, gated on measured health.
ramp: bootstrap
	$(ACTIVATE) && cd ansible && $(PLAYBOOK) ramp.yml -e phase=$(or $(PHASE),status)

## Roll the lab back: previous release, settings file and drop-ins removed, services restarted, proof.
rollback: bootstrap
	$(ACTIVATE) && cd ansible && $(PLAYBOOK) rollback.yml

## Local demo without the lab: a private redis-server, demo intents from the bridge, the service, the outcome.
run: bootstrap
	$(ACTIVATE) && python -m scripts.demo

## Benchmark (bench/README.md): backlog drain and execution throughput against the raw Redis floor; writes
## bench/results.json. The quick size is a first look (about 1.5 minutes); its results go to bench/out/.
bench: bootstrap
	$(ACTIVATE) && python -m bench.run

bench-quick: bootstrap
	$(ACTIVATE) && python -m bench.run --quick

clean:
	rm -rf $(VENV) .pytest_cache
