#!/usr/bin/env bash
# The whole suite (make test), in two phases:
#   1. the lab modules of tests/lab/, three at a time (pytest-xdist, one worker per module): each builds its own
#      lab hosts on its own names and subnets, and they spend most of their time waiting on hosts, not on the CPU;
#   2. everything else, one test at a time: lint, the service and proof tests (some measure CPU and rates, which a
#      busy machine would distort) and the ramp's lab test (its CPU rule needs the cores to itself).
# Both phases always run; the exit code is non-zero if either failed.
set -uo pipefail
cd "$(dirname "$0")/.."

# Shared lab material is created once, before workers could race for it: the lab's SSH key.
key=/var/lib/quantum-lab/ssh/id_ed25519
if [ ! -f "$key" ]; then
  install -d -m 0700 /var/lib/quantum-lab /var/lib/quantum-lab/ssh
  ssh-keygen -q -t ed25519 -N "" -C quantum-lab -f "$key"
fi

# Phase 1: every module of tests/lab/ that builds lab hosts (all but the lint module).
lab=()
ignore=()
for f in tests/lab/test_*.py; do
  [ "$f" = tests/lab/test_lab_lint.py ] && continue
  lab+=("$f")
  ignore+=("--ignore=$f")
done

rc=0
python -m pytest -q -n "${LAB_WORKERS:-3}" --dist loadfile "${lab[@]}" "$@" || rc=1
python -m pytest -q tests "${ignore[@]}" "$@" || rc=1
exit $rc
