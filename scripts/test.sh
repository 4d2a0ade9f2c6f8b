#!/usr/bin/env bash
# The whole suite (make test), in two phases, one test at a time:
#   1. the end-to-end lab modules that CI gates on: the single-host deploy/rollback contract, the managed Redis
#      (ACL users, kill -9 mid-drain) and the fleet's rolling deploy with its faults (each builds its own lab hosts);
#   2. everything else that needs no lab host: lint, the service pieces, chaos, proof, Redis ACL users against a real
#      redis-server, alert rules, dashboard, the monitoring role on loopback, demo, bench smoke.
# `make test-all` (QUANTUM_TEST_ALL=1) adds the slower lab modules: Sentinel failover on five lab hosts, monitoring and the log files on a lab host, the
# fleet lab's life cycle, the single host's life cycle, molecule and the ramp on a lab host.
# Both phases always run; the exit code is non-zero if either failed.
set -uo pipefail
cd "$(dirname "$0")/.."

gated=(tests/lab/test_lab_deploy.py tests/lab/test_lab_redis.py tests/lab/test_fleet_deploy.py)
extra=(tests/lab/test_lab_sentinel.py tests/lab/test_lab_observability.py tests/lab/test_lab_fleet.py tests/lab/test_lab_lifecycle.py
       tests/lab/test_lab_molecule.py tests/test_proof_ramp_lab.py)
lab=("${gated[@]}")
[ "${QUANTUM_TEST_ALL:-0}" = 1 ] && lab+=("${extra[@]}")
ignore=()
for f in "${gated[@]}" "${extra[@]}"; do ignore+=("--ignore=$f"); done

rc=0
python -m pytest -q --durations=12 "${lab[@]}" "$@" || rc=1
python -m pytest -q tests "${ignore[@]}" "$@" || rc=1
exit $rc
