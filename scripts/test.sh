#!/usr/bin/env bash
# The whole suite (make test), in two phases:
#   1. side by side, one pytest process each, every line of output tagged with its name:
#      - the end-to-end lab modules that CI gates on: the single-host deploy/rollback contract, the managed Redis (ACL
#        users, kill -9 mid-drain) and the fleet's rolling deploy with its faults. Each builds its own lab hosts on
#        its own names and subnets (the lab's shared SSH key and root filesystem cache are made under a lock), and
#        they spend most of their time waiting on hosts, not on the CPU;
#      - the checks that measure no rate or time: lint, settings, ramp rules, schema and validation verdicts, alert
#        rules and dashboard, the monitoring role on loopback, Redis ACL users.
#   2. everything else that needs no lab host, one test at a time, once the lab is done: the service pieces, chaos,
#      proof, Sentinel failover against local Redis servers, demo, bench smoke (some of them measure rates and time,
#      which a machine busy with the lab would distort).
# `make test-all` (QUANTUM_TEST_ALL=1) adds the slower lab modules, one at a time between the phases: Sentinel
# failover on five lab hosts, monitoring and the log files on a lab host, the fleet lab's life cycle, the single
# host's life cycle, molecule and the ramp on a lab host.
# Every phase always runs; the exit code is non-zero if any failed. SIDE_BY_SIDE=0 runs phase 1 one test at a time.
set -uo pipefail
cd "$(dirname "$0")/.."

gated=(tests/lab/test_lab_deploy.py tests/lab/test_lab_redis.py tests/lab/test_fleet_deploy.py)
checks=(tests/lab/test_lab_lint.py tests/test_config.py tests/test_ramp_plan.py tests/test_trade_intent_schema.py
        tests/test_validation.py tests/test_admission.py tests/test_results.py tests/test_alert_rules.py
        tests/test_dashboard.py tests/test_monitoring_role.py tests/test_ramp_metrics_source.py tests/test_redis_acl.py)
extra=(tests/lab/test_lab_sentinel.py tests/lab/test_lab_observability.py tests/lab/test_lab_fleet.py
       tests/lab/test_lab_lifecycle.py tests/lab/test_lab_molecule.py tests/test_proof_ramp_lab.py)
ignore=()
for f in "${gated[@]}" "${checks[@]}" "${extra[@]}"; do ignore+=("--ignore=$f"); done

rc=0
started=$SECONDS
if [ "${SIDE_BY_SIDE:-1}" = 1 ]; then
  args=("$@")
  pids=()
  # One pytest process in the background, every output line prefixed with [TAG]. The pipeline runs in a subshell of
  # its own: `wait` on a background pipeline that ended before an earlier `wait` returned would report sed's status,
  # not pytest's; a subshell's own status is kept until it is waited for.
  tagged() {  # TAG FILE...
    local tag=$1
    shift
    (python -m pytest -v -p no:cacheprovider --durations=8 "$@" "${args[@]}" 2>&1 | sed -u "s/^/[$tag] /") &
    pids+=($!)
  }
  for f in "${gated[@]}"; do tagged "$(basename "$f" .py)" "$f"; done
  tagged checks "${checks[@]}"
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
else
  python -m pytest -q -p no:cacheprovider --durations=12 "${gated[@]}" "${checks[@]}" "$@" || rc=1
fi
echo "phase 1 (lab modules and checks): $((SECONDS - started)) s"
if [ "${QUANTUM_TEST_ALL:-0}" = 1 ]; then
  python -m pytest -q -p no:cacheprovider --durations=12 "${extra[@]}" "$@" || rc=1
fi
python -m pytest -q -p no:cacheprovider --durations=12 tests "${ignore[@]}" "$@" || rc=1
echo "make test: $((SECONDS - started)) s, exit $rc"
exit $rc
