"""deploy.yml and rollback.yml end to end on a lab host (qe2e1, 10.213.61.0/30), in the order an operator meets them:

bad inventory value (nothing touched) -> deploy (intents published through the bridge come back as results) ->
unchanged tree (no new release, no restart) -> changed code (new release) -> a recorded ramp survives a redeploy ->
rollback.yml (previous release, settings file and drop-ins gone, services active; again: nothing to roll back to;
by name) -> a failure after the code switch (automatic rollback, nothing half-applied) -> rollback.yml after a
deploy killed right after the switch.

The tests run in file order and build on each other; the deployed tree is a private snapshot (LabHost.src).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime, timezone

import pytest

from quantum_labkit import ANSIBLE, ENV_FILE, UNITS, LabHost, fresh, recap, timed, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(1200)]
NAME, IP, GATEWAY = "qe2e1", "10.213.61.2", "10.213.61.1"
DEFAULT_LINE = "P0.D.5 Config: INTENT_MAX_AGE_SEC=600, XREADGROUP_COUNT=10, EXEC_CONCURRENCY=1"
STATE = {}  # release ids seen so far, shared by the ordered tests
PYCACHE = "/var/cache/quantum-lab-pycache"  # quantum_lab_pycache.CACHE_DIR on every lab host


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    yield from fresh(lambda: LabHost(tmp_path_factory.mktemp("e2e"), NAME, IP, GATEWAY))


def deploy(lab: LabHost, *args: str) -> subprocess.CompletedProcess[str]:
    return timed(lab, "deploy.yml", *args)


def flat(res: subprocess.CompletedProcess[str]) -> str:
    """The play output with line folding undone (the yaml callback wraps long messages)."""
    return re.sub(r"\s+", " ", res.stdout)


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    return flat(res)


def both_active(lab: LabHost) -> None:
    assert lab.out("systemctl is-active " + " ".join(UNITS)) == "active\nactive"


def proof_healthy(lab: LabHost) -> None:
    res = lab.sh("/opt/quantum/ops/proof_pipeline.sh --once", check=False, timeout=90)
    assert res.returncode == 0 and "VERDICT: HEALTHY" in res.stdout, res.stdout[-2000:] + res.stderr


@pytest.mark.parametrize("extra, names", [
    (["-e", "quantum_env_exec_concurrency=0"], "EXEC_CONCURRENCY"),
    (["-e", json.dumps({"quantum_env_xreadgroup_count": "ten"})], "XREADGROUP_COUNT"),
    (["-e", json.dumps({"quantum_env_intent_max_age_sec": 10.5})], "INTENT_MAX_AGE_SEC"),
    (["-e", "quantum_env_pipeline_diag=maybe"], "PIPELINE_DIAG"),
    (["-e", "quantum_env_redis_url=http://example.invalid/"], "REDIS_URL"),
])
def test_bad_inventory_value_fails_before_the_host_is_touched(lab: LabHost, extra: list[str], names: str) -> None:
    before = lab.fingerprint()
    logins_before = lab.logins()  # counts its own login too
    res = deploy(lab, *extra)
    logins_after = lab.logins()
    assert res.returncode != 0
    assert names in flat(res) and "Nothing was deployed" in flat(res), res.stdout[-3000:]
    # The play stopped in the control-node pre-flight: no task of a later play ran.
    assert "PLAY [Redis]" not in res.stdout and "TASK [quantum_redis" not in res.stdout
    assert "PLAY [Deploy the release]" not in res.stdout
    assert lab.fingerprint() == before
    assert lab.sh("test -e /etc/quantum || test -e /opt/quantum", check=False).returncode != 0, "host was touched"
    # No SSH session was opened to the host by that run: the only new login is the counting command's own.
    assert logins_after == logins_before + 1


def test_deploy_serves_and_intents_published_through_the_bridge_come_back_as_results(lab: LabHost) -> None:
    out = ok(deploy(lab))
    assert "All schema validation tests PASSED" in out
    assert f"DEPLOYED on {NAME}: current -> releases/" in out
    STATE["r1"] = lab.current()
    assert lab.releases() == [STATE["r1"]]
    both_active(lab)
    assert lab.config_line().endswith(DEFAULT_LINE)
    assert lab.out(f"stat -c '%U:%G %a' {ENV_FILE}") == "root:quantum 640"
    for unit in UNITS:  # the settings file, then the unit's own Redis credentials (their REDIS_URL wins)
        files = lab.out(f"systemctl show -p EnvironmentFiles --value {unit}").splitlines()
        assert files[0].startswith(ENV_FILE) and files[1].startswith(f"/etc/quantum/redis-{unit[len('quantum-'):]}.env")

    tag = f"e2e-{int(time.time())}"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    docs = [json.dumps({"intent_id": f"{tag}-{i}", "symbol": "BTCUSDT", "side": "BUY", "order_type": "LIMIT",
                        "qty": 0.01, "price": 64000.5, "timestamp": now, "source": "ai-engine", "confidence": 0.9})
            for i in range(5)]
    before = lab.result_count()
    lab.out("cd /opt/quantum/current && set -a && . /etc/quantum/ai-engine.env && . /etc/quantum/redis-ai-engine.env && "
            f"set +a && printf '%s\\n' {' '.join(repr(d) for d in docs)} | venv/bin/python -m consumer.bridge")

    def ours() -> int:
        raw = lab.redis("--raw XREVRANGE quantum:stream:execution.result + - COUNT 2000")
        return len(set(re.findall(rf"{tag}-\d", raw)))

    wait_until(lambda: ours() == 5, 30, what="results for the 5 published intents")
    assert lab.result_count() >= before + 5


def test_unchanged_tree_makes_no_new_release_and_restarts_nothing(lab: LabHost) -> None:
    before = lab.fingerprint()
    compiled = lab.out(f"ls {PYCACHE} | wc -l")
    res = deploy(lab, "--skip-tags", "molecule-idempotence-notest")
    out = ok(res)
    assert f"Release {STATE['r1']} already holds tree" in out
    assert "unchanged tree, no new release" in out
    assert recap(res.stdout, NAME)["changed"] == 0
    assert lab.fingerprint() == before  # same settings, drop-ins, releases, link and service invocations
    # The lab host's bytecode cache of Ansible's module payloads: filled by the first deploy, only read by this one.
    assert int(compiled) > 0 and lab.out(f"ls {PYCACHE} | wc -l") == compiled


def test_changed_code_makes_a_new_release(lab: LabHost) -> None:
    lab.change_code("second release")
    time.sleep(1)  # release ids have one-second resolution; two deploys within a second would collide
    out = ok(deploy(lab))
    STATE["r2"] = lab.current()
    assert STATE["r2"] != STATE["r1"] and STATE["r2"] > STATE["r1"]
    assert lab.releases() == [STATE["r1"], STATE["r2"]]
    assert f"current -> releases/{STATE['r2']} (new release" in out
    both_active(lab)
    assert lab.unit("quantum-execution", "WorkingDirectory")["WorkingDirectory"] == "/opt/quantum/current"
    cwd = lab.out("readlink /proc/$(systemctl show -p MainPID --value quantum-execution)/cwd")
    assert cwd == f"/opt/quantum/releases/{STATE['r2']}"


def test_redeploy_keeps_the_values_a_ramp_recorded(lab: LabHost) -> None:
    lab.out("mkdir -p /var/lib/quantum/ramp && echo '{\"phase\": 3, \"xreadgroup_count\": 40, \"exec_concurrency\": 4}'"
            " > /var/lib/quantum/ramp/state.json")
    out = ok(deploy(lab))
    assert "Ramp phase 3 is recorded" in out
    env = lab.out(f"grep -E '^(XREADGROUP_COUNT|EXEC_CONCURRENCY)=' {ENV_FILE}").splitlines()
    assert env == ["XREADGROUP_COUNT=40", "EXEC_CONCURRENCY=4"]
    assert lab.config_line().endswith("INTENT_MAX_AGE_SEC=600, XREADGROUP_COUNT=40, EXEC_CONCURRENCY=4")
    assert lab.current() == STATE["r2"]  # settings only: no new release
    lab.out("rm -f /var/lib/quantum/ramp/state.json")
    ok(deploy(lab))
    assert lab.config_line().endswith(DEFAULT_LINE)


def test_rollback_restores_the_previous_release_without_settings(lab: LabHost) -> None:
    res = lab.playbook("rollback.yml")
    out = ok(res)
    assert f"ROLLED BACK on {NAME}: current -> releases/{STATE['r1']} (was {STATE['r2']})" in out
    assert f"settings file {ENV_FILE}: removed" in out
    assert lab.current() == STATE["r1"]
    assert lab.sh(f"test -e {ENV_FILE}", check=False).returncode != 0
    assert lab.out("ls /etc/systemd/system/quantum-*.service.d/ | grep -c p0d5 || true") == "0"
    for unit in UNITS:  # only the unit's own Redis credentials are left: they belong to Redis, not to a release
        files = lab.out(f"systemctl show -p EnvironmentFiles --value {unit}").splitlines()
        assert [f.split()[0] for f in files] == [f"/etc/quantum/redis-{unit[len('quantum-'):]}.env"], files
    both_active(lab)
    cwd = lab.out("readlink /proc/$(systemctl show -p MainPID --value quantum-execution)/cwd")
    assert cwd == f"/opt/quantum/releases/{STATE['r1']}"
    assert "P0.D.5 Config:" in lab.config_line()  # restarted: a new run with its own line
    proof_healthy(lab)


def test_rollback_again_says_there_is_nothing_to_roll_back_to(lab: LabHost) -> None:
    before = lab.fingerprint()
    res = lab.playbook("rollback.yml")
    assert res.returncode != 0
    assert "NOTHING TO ROLL BACK TO" in flat(res) and f"Live: {STATE['r1']}" in flat(res), res.stdout[-3000:]
    assert lab.fingerprint() == before
    both_active(lab)


def test_rollback_to_a_named_release(lab: LabHost) -> None:
    out = ok(lab.playbook("rollback.yml", "-e", f"rollback_release={STATE['r2']}"))
    assert f"current -> releases/{STATE['r2']} (was {STATE['r1']})" in out
    assert lab.current() == STATE["r2"]
    bad = lab.playbook("rollback.yml", "-e", "rollback_release=19990101T000000Z")
    assert bad.returncode != 0 and "is not a complete release on this host" in flat(bad)
    assert lab.current() == STATE["r2"]


def test_failure_after_the_switch_rolls_back_automatically_and_leaves_nothing_half_applied(lab: LabHost) -> None:
    ok(deploy(lab))  # settings and drop-ins back, on release r2 (same tree: no new release)
    assert lab.current() == STATE["r2"]
    before = lab.fingerprint()
    lab.change_code("third release, deployed with a setting the service refuses")
    time.sleep(1)
    res = deploy(lab, "-e", json.dumps({"quantum_env_extra": {"EXECUTOR": "no_such_module:Venue"}}))
    assert res.returncode != 0
    out = flat(res)
    assert "ROLLING BACK AUTOMATICALLY to release " + STATE["r2"] in out, res.stdout[-5000:]
    assert "DEPLOY FAILED AND WAS ROLLED BACK AUTOMATICALLY" in out
    assert f"current -> releases/{STATE['r2']} (serving again)" in out
    assert "quantum-execution did not come up" in out  # the real cause is named
    after = lab.fingerprint()
    for key in ("env", "dropins", "current", "releases"):
        assert after[key] == before[key], f"{key} half-applied: {before[key]!r} -> {after[key]!r}"
    assert "EXECUTOR" not in lab.out(f"cat {ENV_FILE}")
    both_active(lab)
    assert lab.config_line().endswith(DEFAULT_LINE)
    proof_healthy(lab)


def test_rollback_after_a_deploy_killed_right_after_the_switch(lab: LabHost) -> None:
    """A half-finished deploy: `current` already points at the new release, nothing restarted yet."""
    previous = lab.current()
    lab.change_code("fourth release, deploy killed after the switch")
    time.sleep(1)
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.Popen(["ansible-playbook", "-i", str(lab.inventory), "deploy.yml"], cwd=ANSIBLE, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen_switch = False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Move the new link over `current`" in line:
                seen_switch = True
            elif seen_switch and line.startswith("changed:"):
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
    assert seen_switch, "the deploy never reached the switch"
    half = lab.current()
    assert half != previous and half > previous
    out = ok(lab.playbook("rollback.yml"))
    assert f"current -> releases/{previous} (was {half})" in out
    assert lab.current() == previous
    assert lab.sh(f"test -e {ENV_FILE}", check=False).returncode != 0
    both_active(lab)
    proof_healthy(lab)


def test_redis_credentials_never_appear_in_play_output_journal_or_proof(lab: LabHost) -> None:
    """A new password for the proof's ACL user: Redis reloads its users, and the password shows up nowhere but the
    proof's 0640 credential file (Redis itself keeps only its SHA-256)."""
    secret = f"pw{os.urandom(8).hex()}"
    cred = "/etc/quantum/redis-proof.env"
    try:
        res = deploy(lab, "--diff", "-e", json.dumps({"quantum_redis_password_proof": secret}))
        ok(res)
        assert secret not in res.stdout + res.stderr
        # --diff would show the credential file's new REDIS_URL line; the task is no_log, so no diff is printed.
        assert "REDIS_URL=" not in res.stdout
        assert "TASK [quantum_redis : Write the credential file of each client on this host]" in res.stdout
        assert lab.out(f"grep -rlF {secret} /etc /opt/quantum /var/lib/quantum || true") == cred  # only there
        assert lab.out(f"stat -c '%U:%G %a' {cred}") == "root:quantum 640"
        journal = lab.out("journalctl --no-pager -o cat --since '-15min'")
        assert secret not in journal
        proof = lab.sh("/opt/quantum/ops/proof_pipeline.sh --once", check=False, timeout=90)
        assert proof.returncode == 0, proof.stdout[-1500:] + proof.stderr
        assert secret not in proof.stdout + proof.stderr
        assert "127.0.0.1:6379" in proof.stdout  # the proof shows where it connected, redacted
    finally:
        ok(deploy(lab))
    assert lab.redis("PING") == "PONG"  # the lab's own proof password is back
    assert lab.config_line().endswith(DEFAULT_LINE)
