#!/usr/bin/env bash
# The whole suite (make test), in two phases:
#   1. the end-to-end lab modules that CI gates on, side by side, one pytest process each: the single-host
#      deploy/rollback contract, the managed Redis (ACL users, kill -9 mid-drain) and the fleet's rolling deploy with
#      its faults. Each builds its own lab hosts on its own names and subnets (the lab's shared key and root
#      filesystem cache are made under a lock), and they spend most of their time waiting on hosts, not on the CPU;
#      each line of their output carries the module's name.
#   2. everything else that needs no lab host, one test at a time, after the lab: lint, the service pieces, chaos,
#      proof, Redis ACL users against a real redis-server, alert rules, dashboard, the monitoring role on loopback,
#      demo, bench smoke (some of them measure rates, which a machine busy with the lab would distort).
# `make test-all` (QUANTUM_TEST_ALL=1) adds the slower lab modules, one at a time after the gated ones: Sentinel
# failover on five lab hosts, monitoring and the log files on a lab host, the fleet lab's life cycle, the single
# host's life cycle, molecule and the ramp on a lab host.
# Both phases always run; the exit code is non-zero if either failed. LAB_SIDE_BY_SIDE=0 runs phase 1 in a row.
set -uo pipefail
cd "$(dirname "$0")/.."

gated=(tests/lab/test_lab_deploy.py tests/lab/test_lab_redis.py tests/lab/test_fleet_deploy.py)
extra=(tests/lab/test_lab_sentinel.py tests/lab/test_lab_observability.py tests/lab/test_lab_fleet.py tests/lab/test_lab_lifecycle.py
       tests/lab/test_lab_molecule.py tests/test_proof_ramp_lab.py)
ignore=()
for f in "${gated[@]}" "${extra[@]}"; do ignore+=("--ignore=$f"); done

rc=0
started=$SECONDS
if [ "${LAB_SIDE_BY_SIDE:-1}" = 1 ]; then
  pids=()
  for f in "${gated[@]}"; do
    tag=$(basename "$f" .py)
    python -m pytest -v -p no:cacheprovider --durations=8 "$f" "$@" 2>&1 | sed -u "s/^/[$tag] /" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
else
  python -m pytest -q -p no:cacheprovider --durations=12 "${gated[@]}" "$@" || rc=1
fi
echo "lab phase: $((SECONDS - started)) s"
if [ "${QUANTUM_TEST_ALL:-0}" = 1 ]; then
  python -m pytest -q -p no:cacheprovider --durations=12 "${extra[@]}" "$@" || rc=1
fi
python -m pytest -q tests "${ignore[@]}" "$@" || rc=1
echo "make test: $((SECONDS - started)) s"
exit $rc
