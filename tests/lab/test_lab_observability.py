"""The runbook's log file and the monitoring on a lab host (qobs1, 10.213.65.0/30), after one deploy.yml with the
host in the optional group quantum_monitoring (Prometheus + redis_exporter on the host itself, as in inventory/lab):

redeploy changes nothing -> log directory and files owned and moded for the operators' group -> `tail -f
execution.log | grep STALE_INTENT_DROP` sees a stale intent, and the journal the same line -> `logrotate -f` rotates
and the running service writes on into the new file -> a log file that cannot be opened stops the unit with exit 2,
no restart loop -> Prometheus scrapes every target (all up) with stream/group/consumer/host labels -> venue errors
fire QuantumErrorRateHigh -> a stopped execution service with the AI engine publishing fires QuantumBacklogGrowing
-> the ramp, whose gate reads this Prometheus (the inventory names a monitoring host), reaches the verdict the proof's
own sampling reaches over the same window: healthy traffic, then venue errors.

The alerts fire in minutes because this inventory shortens their `for:` (quantum_monitoring_alert_for: 15 s and 30 s
instead of 2 and 10 minutes); their expressions and thresholds are the shipped ones. The tests run in file order and
share the host.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from quantum_labkit import ANSIBLE, ROOT, LabHost, fresh, recap, timed, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(1500)]
NAME, IP, GATEWAY = "qobs1", "10.213.65.2", "10.213.65.1"
PROMETHEUS = f"http://{IP}:9090"
LOG_DIR = "/var/log/quantum"
EXEC_LOG = f"{LOG_DIR}/execution.log"
ENGINE_LOG = f"{LOG_DIR}/ai-engine.log"
RUNTIME_DROPIN = "/run/systemd/system/quantum-execution.service.d/zz-observability-test.conf"
ALERT_FOR = {"QuantumErrorRateHigh": "15s", "QuantumBacklogGrowing": "30s"}
HOST_VARS = {
    "quantum_monitoring_alert_for": ALERT_FOR,
    # The stale-drop log speaks at most once per interval: 1 s lets a test see a fresh line without waiting 30 s.
    "quantum_env_extra": {"METRICS_PORT": 9108, "STALE_LOG_INTERVAL_SEC": 1},
    # Points every 5 s for the ramp's Prometheus source, as its own sampling takes them (15 s as shipped: a third).
    "quantum_monitoring_scrape_interval": "5s",
}
RAMP_WINDOW = 40


class ObservedLabHost(LabHost):
    """A LabHost that is also the inventory's quantum_monitoring host, with this module's host variables. Its
    playbooks run from a private copy of ansible/ taken with the tree, so edits elsewhere cannot change them mid-run."""

    def snapshot_tree(self) -> None:
        super().snapshot_tree()
        self.ansible = self.workdir / "ansible"
        if self.ansible.exists():
            shutil.rmtree(self.ansible)
        shutil.copytree(ANSIBLE, self.ansible, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ansible", "*.retry"))

    def playbook(self, name: str, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
        return subprocess.run(["ansible-playbook", "-i", str(self.inventory), name, *args], cwd=self.ansible, env=env,
                              capture_output=True, text=True, timeout=timeout)

    def write_inventory(self) -> None:
        super().write_inventory()
        path = self.inventory / "hosts.yml"
        inv = json.loads(path.read_text())
        inv["all"]["children"]["quantum_lab"]["hosts"][self.name].update(HOST_VARS)
        # the repository's package cache, as the other lab tests use (not one beside the private ansible/ copy)
        inv["all"]["children"]["quantum"]["vars"]["quantum_release_build_dir"] = str(ROOT / "build" / "ansible")
        inv["all"]["children"]["quantum_monitoring"] = {"hosts": {self.name: None}}
        path.write_text(json.dumps(inv, indent=1))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    yield from fresh(lambda: ObservedLabHost(tmp_path_factory.mktemp("obs"), NAME, IP, GATEWAY))


def api(path: str, **params: str) -> dict:
    """One Prometheus HTTP API call from the control node; the `data` of a successful answer."""
    url = f"{PROMETHEUS}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]


def firing(alert: str) -> list[dict]:
    return [a for a in api("/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def run_timed(lab: LabHost, *args: str) -> subprocess.CompletedProcess[str]:
    res = timed(lab, "deploy.yml", *args, timeout=1200)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    return res


def publish_stale(lab: LabHost, prefix: str, n: int = 3) -> None:
    """Intents an hour old through the bridge, as the AI engine's user would (no LOG_FILE in this shell)."""
    lab.out("cd /opt/quantum/current && set -a && . /etc/quantum/ai-engine.env && . /etc/quantum/redis-ai-engine.env"
            f" && set +a && venv/bin/python -m consumer.bridge --bulk {n} --age-sec 3600 --prefix {prefix}")


def runtime_dropin(lab: LabHost, body: str | None) -> None:
    """Add (or with None remove) a runtime drop-in of quantum-execution, gone at the next boot, then restart it."""
    if body is None:
        lab.out(f"rm -f {RUNTIME_DROPIN} && systemctl daemon-reload && systemctl reset-failed quantum-execution"
                " && systemctl restart quantum-execution")
    else:
        lab.out(f"mkdir -p {Path(RUNTIME_DROPIN).parent} && printf '[Service]\\n%s\\n' '{body}' > {RUNTIME_DROPIN}"
                " && systemctl daemon-reload")


def test_deploy_installs_monitoring_and_a_redeploy_changes_nothing(lab: LabHost) -> None:
    out = re.sub(r"\s+", " ", run_timed(lab).stdout)
    assert f"DEPLOYED on {NAME}" in out and "PLAY [Prometheus and redis_exporter]" in out
    assert lab.out("systemctl is-active quantum-ai-engine quantum-execution prometheus prometheus-redis-exporter"
                   " logrotate.timer") == "active\n" * 4 + "active"
    res = run_timed(lab, "--skip-tags", "molecule-idempotence-notest")
    assert recap(res.stdout, NAME)["changed"] == 0, res.stdout[-6000:]


def test_log_files_are_readable_by_the_operators_group_only(lab: LabHost) -> None:
    assert lab.out(f"stat -c '%U:%G %a' {LOG_DIR}") == "quantum:quantum-ops 2750"
    for path in (EXEC_LOG, ENGINE_LOG):
        assert lab.out(f"stat -c '%U:%G %a' {path}") == "quantum:quantum-ops 640", path
    for unit, path in (("quantum-execution", EXEC_LOG), ("quantum-ai-engine", ENGINE_LOG)):
        assert f"LOG_FILE={path}" in lab.out(f"systemctl show -p Environment --value {unit}")
    wait_until(lambda: "bridge_demo rate=" in lab.out(f"cat {ENGINE_LOG}"), 30, what="the AI engine's start line")
    assert "P0.D.5 Config:" in lab.out(f"cat {EXEC_LOG}")
    lab.out("id qobsop >/dev/null 2>&1 || useradd -M -G quantum-ops -s /usr/sbin/nologin qobsop")
    assert "P0.D.5 Config:" in lab.out(f"runuser -u qobsop -- cat {EXEC_LOG}")
    outsider = lab.sh(f"runuser -u nobody -- cat {EXEC_LOG}", check=False)
    assert outsider.returncode != 0 and "Permission denied" in outsider.stderr


def test_tail_f_grep_sees_a_stale_drop_and_the_journal_has_the_same_line(lab: LabHost) -> None:
    tag = f"obs-stale-{int(time.time())}"
    cmd = (f"timeout 60 tail -n0 -F {EXEC_LOG} | grep -m1 --line-buffered 'STALE_INTENT_DROP intent_id={tag}'")
    ssh = subprocess.Popen(["ssh", "-i", "/var/lib/quantum-lab/ssh/id_ed25519", "-o", "BatchMode=yes", "-o",
                            "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes", "-o",
                            f"UserKnownHostsFile=/var/lib/quantum-lab/hosts/{NAME}/known_hosts", f"root@{IP}", cmd],
                           stdout=subprocess.PIPE, text=True)
    try:
        # tail is following once its process shows up; then the stale intents go out
        wait_until(lambda: lab.sh(f"pgrep -f 'tail -n0 -F {EXEC_LOG}'", check=False).returncode == 0, 20,
                   what="tail -f running on the host")
        publish_stale(lab, tag)
        line, _ = ssh.communicate(timeout=70)
    finally:
        if ssh.poll() is None:
            ssh.kill()
    assert f"STALE_INTENT_DROP intent_id={tag}" in line and "exceeds 600s TTL" in line, line
    message = line.split(" ", 1)[1].strip()  # without the file's own timestamp: "WARNING STALE_INTENT_DROP ..."
    journal = lab.out(f"journalctl --no-pager -o cat -u quantum-execution --grep 'intent_id={tag}'")
    assert message in journal.splitlines(), (message, journal)


def test_logrotate_rotates_and_the_running_service_writes_on_into_the_new_file(lab: LabHost) -> None:
    pid = lab.unit("quantum-execution", "MainPID")["MainPID"]
    inode = lab.out(f"stat -c %i {EXEC_LOG}")
    res = lab.sh("logrotate -v -f /etc/logrotate.d/quantum", check=False)
    assert res.returncode == 0 and "error" not in res.stderr.lower(), res.stderr
    assert lab.out(f"stat -c '%U:%G %a' {EXEC_LOG} {EXEC_LOG}.1") == "quantum:quantum-ops 640\nquantum:quantum-ops 640"
    # renamed, not copied and truncated: the old file (its inode) is now .1, and the runbook's path is a new file
    assert lab.out(f"stat -c %i {EXEC_LOG}.1") == inode and lab.out(f"stat -c %i {EXEC_LOG}") != inode
    tag = f"obs-rotated-{int(time.time())}"

    def written_after_rotation() -> bool:  # a batch per poll: the drop log speaks at most once per second
        publish_stale(lab, f"{tag}-{time.monotonic_ns()}", 2)
        return f"STALE_INTENT_DROP intent_id={tag}" in lab.out(f"cat {EXEC_LOG}")

    wait_until(written_after_rotation, 30, interval=1, what="a stale drop in the new log file")
    assert tag not in lab.out(f"cat {EXEC_LOG}.1")
    assert lab.unit("quantum-execution", "MainPID")["MainPID"] == pid  # no restart, no signal
    assert f"intent_id={tag}" in lab.out(f"journalctl --no-pager -o cat -u quantum-execution --grep 'intent_id={tag}'")


def test_a_log_file_that_cannot_be_opened_stops_the_unit_with_exit_2_and_no_restart_loop(lab: LabHost) -> None:
    bad = f"{LOG_DIR}/missing/execution.log"
    runtime_dropin(lab, f"Environment=LOG_FILE={bad}")
    try:
        assert lab.sh("systemctl restart quantum-execution", check=False).returncode != 0
        state = wait_until(lambda: (s := lab.unit("quantum-execution", "ActiveState", "ExecMainStatus", "NRestarts"))
                           ["ActiveState"] == "failed" and s, 30, what="quantum-execution failed")
        assert state["ExecMainStatus"] == "2" and state["NRestarts"] == "0", state
        inv = lab.unit("quantum-execution", "InvocationID")["InvocationID"]
        journal = lab.out(f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={inv}")
        assert f"config error: LOG_FILE='{bad}' cannot be opened for appending (No such file or directory)" in journal
    finally:
        runtime_dropin(lab, None)
    assert lab.out("systemctl is-active quantum-execution") == "active"


def test_prometheus_scrapes_every_target_with_stream_group_consumer_and_host_labels(lab: LabHost) -> None:
    def all_up() -> list[dict] | None:
        targets = api("/api/v1/targets")["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = wait_until(all_up, 90, interval=2, what="every Prometheus target up")
    assert {t["labels"]["job"] for t in targets} == {"quantum_execution", "quantum_redis", "prometheus"}
    assert {t["labels"]["host"] for t in targets} == {NAME}
    series = api("/api/v1/query", query='quantum_execution_intents_total{outcome="executed"}')["result"]
    assert series and all(s["metric"]["stream"] == "quantum:stream:trade.intent" and
                          s["metric"]["group"] == "quantum-execution" and s["metric"]["consumer"].startswith(NAME)
                          and s["metric"]["host"] == NAME for s in series), series
    pending = api("/api/v1/query", query="redis_stream_group_consumer_messages_pending")["result"]
    assert any(s["metric"].get("consumer", "").startswith(NAME) and s["metric"]["group"] == "quantum-execution"
               for s in pending), pending
    streams = {s["metric"]["stream"] for s in api("/api/v1/query", query="redis_stream_length")["result"]}
    assert {"quantum:stream:trade.intent", "quantum:stream:execution.result"} <= streams
    durations = {r["name"]: r["duration"] for g in api("/api/v1/rules")["groups"] for r in g["rules"]
                 if r["type"] == "alerting"}
    assert durations["QuantumErrorRateHigh"] == 15 and durations["QuantumBacklogGrowing"] == 30
    assert durations["QuantumBacklogOld"] == 60  # the others as shipped


def test_venue_errors_fire_the_error_rate_alert(lab: LabHost) -> None:
    assert not firing("QuantumErrorRateHigh")
    started = time.monotonic()
    runtime_dropin(lab, "Environment=PAPER_FAIL_RATE=0.5")
    try:
        lab.out("systemctl restart quantum-execution")
        alerts = wait_until(lambda: firing("QuantumErrorRateHigh"), 240, interval=3, what="QuantumErrorRateHigh firing")
        print(f"QuantumErrorRateHigh firing {time.monotonic() - started:.0f}s after PAPER_FAIL_RATE=0.5")
        assert alerts[0]["labels"]["severity"] == "critical"
        assert 0.05 < float(alerts[0]["value"]) <= 1.0
    finally:
        runtime_dropin(lab, None)


def test_a_stopped_execution_service_fires_backlog_growing(lab: LabHost) -> None:
    assert not firing("QuantumBacklogGrowing")
    started = time.monotonic()
    lab.out("systemctl stop quantum-execution")
    try:
        alerts = wait_until(lambda: firing("QuantumBacklogGrowing"), 300, interval=3,
                            what="QuantumBacklogGrowing firing")
        print(f"QuantumBacklogGrowing firing {time.monotonic() - started:.0f}s after quantum-execution stopped")
        assert alerts[0]["labels"]["group"] == "quantum-execution" and float(alerts[0]["value"]) > 60
    finally:
        lab.out("systemctl start quantum-execution")
    # The backlog drains: the delivery gap returns to 0 once the service reads again.
    wait_until(lambda: all(float(s["value"][1]) < 5 for s in
                           api("/api/v1/query", query="quantum:intent_delivery_gap_seconds")["result"]),
               120, interval=3, what="the delivery gap back under 5 s")


def gate_beside_the_proof(lab: LabHost) -> tuple[str, dict]:
    """ramp.yml's dry run of phase 2 (its gate reads Prometheus) and, started on the host as soon as that observation
    runs, the proof's own sampling over a window as long: the ramp's gate summary and the proof's observation."""
    args = ("-e", "phase=2", "-e", "dry_run=true", "-e", f"quantum_ramp_gate_window_sec={RAMP_WINDOW}",
            "-e", "quantum_ramp_interval_sec=5")
    with ThreadPoolExecutor(1) as pool:
        ramp = pool.submit(timed, lab, "ramp.yml", *args, timeout=600)
        wait_until(lambda: ramp.done() or lab.sh("pgrep -f '[o]bserve --json.*--metrics-source [p]rometheus'",
                                                 check=False).returncode == 0, 120, interval=0.5,
                   what="the ramp's observation from Prometheus running on the host")
        assert not ramp.done(), ramp.result().stdout[-4000:]
        started = time.monotonic()
        proof = lab.sh(f"/opt/quantum/ops/proof_pipeline.sh observe --json --window {RAMP_WINDOW} --interval 5",
                       check=False, timeout=RAMP_WINDOW + 120)
        res = ramp.result()
        print(f"ramp dry run done {time.monotonic() - started:.0f}s after the proof's window began")
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    out = " ".join(res.stdout.split())
    m = re.search(r"gate: ((HEALTHY|UNHEALTHY|HOLD): .*? from Prometheus http://" + re.escape(IP) + r":9090 "
                  rf"\(host {NAME}\))", out)
    assert m and f"DRY RUN on {NAME}: nothing changed" in out, out[-4000:]
    assert proof.returncode in (0, 1, 3) and proof.stdout.strip(), proof.stderr
    return m.group(1), json.loads(proof.stdout)


def error_rate(summary: str) -> float:
    m = re.search(r"error rate ([0-9.]+)% \(", summary)
    assert m, summary
    return float(m.group(1)) / 100


def test_the_ramp_reading_prometheus_agrees_with_the_proof_on_the_same_window(lab: LabHost) -> None:
    assert lab.out("systemctl is-active quantum-execution quantum-ai-engine") == "active\nactive"
    gate, proof = gate_beside_the_proof(lab)
    print(f"healthy traffic: ramp (Prometheus) {gate}\n  proof: {proof['summary']}")
    assert gate.startswith("HEALTHY: ") and proof["decision"] == "healthy", (gate, proof["summary"])
    assert proof["source"]["name"] == "proof"
    assert abs(error_rate(gate) - error_rate(proof["summary"])) < 0.02

    runtime_dropin(lab, "Environment=PAPER_FAIL_RATE=0.5")
    try:
        lab.out("systemctl restart quantum-execution")
        gate, proof = gate_beside_the_proof(lab)
    finally:
        runtime_dropin(lab, None)
    print(f"venue errors: ramp (Prometheus) {gate}\n  proof: {proof['summary']}")
    assert gate.startswith("UNHEALTHY: ") and proof["decision"] == "unhealthy", (gate, proof["summary"])
    assert proof["fired"] == ["error_rate_high"], proof["summary"]
    assert 0.3 < error_rate(proof["summary"]) < 0.7 and abs(error_rate(gate) - error_rate(proof["summary"])) < 0.1
