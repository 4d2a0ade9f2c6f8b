"""ramp.yml on a lab host with live demo traffic: walk phases 1 → 5, refuse skips, dry run, and make each safety rule
fire — executor errors, a consumer that cannot keep up, CPU burnt inside the unit, unreadable metrics — checking what
the playbook printed, what it changed on the host, and that the AI engine was never restarted.

The ramp gets its own lab host (qramp1, 10.213.48.0/30, built with tests/lab/quantum_labkit.py from a private snapshot
of the tree) so that it never restarts services under another test's feet. Windows are seconds here; the role's defaults are for production.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from quantum_labkit import ANSIBLE, ENV_FILE, LabHost

HOST, IP, GATEWAY = "qramp1", "10.213.48.2", "10.213.48.1"
STATE_FILE = "/var/lib/quantum/ramp/state.json"
WINDOWS = ["-e", "quantum_ramp_gate_window_sec=8", "-e", "quantum_ramp_observe_window_sec=10",
           "-e", "quantum_ramp_warmup_sec=2", "-e", "quantum_ramp_interval_sec=2"]
PHASES = yaml.safe_load((ANSIBLE / "vars" / "ramp_phases.yml").read_text())["quantum_ramp_phases"]

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(1800)]

# Burn two cores inside the execution unit's cgroup as soon as the ramp has restarted it (the restart kills it again).
BURN_AFTER_RESTART = r"""
old=$(systemctl show -p InvocationID --value quantum-execution)
for i in $(seq 1 480); do
  new=$(systemctl show -p InvocationID --value quantum-execution)
  [ "$new" != "$old" ] && [ "$(systemctl is-active quantum-execution)" = active ] && break
  sleep 0.25
done
for n in 1 2; do
  python3 -c 'import time
end = time.time() + 45
while time.time() < end: pass' </dev/null >/dev/null 2>&1 &
  echo $! > /sys/fs/cgroup/unified/system.slice/quantum-execution.service/cgroup.procs && echo "burner $! in the unit"
done
"""


class RampLab(LabHost):
    """The private lab host (tests/lab/quantum_labkit.py) plus what the ramp tests read and inject."""

    def ramp(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.playbook("ramp.yml", *WINDOWS, *args, timeout=600)

    def ssh(self, command: str, check: bool = True, stdin: str | None = None) -> str:
        return self.sh(command, check=check, timeout=120, stdin=stdin).stdout

    def env_values(self) -> dict[str, str]:
        text = self.ssh(f"cat {ENV_FILE}")
        return dict(re.findall(r"(?m)^([A-Z_]+)=(.*)$", text))

    def state(self) -> dict[str, Any] | None:
        out = self.ssh(f"cat {STATE_FILE} 2>/dev/null || true")
        return json.loads(out) if out.strip() else None

    def invocation(self, unit: str = "quantum-execution") -> str:
        return self.ssh(f"systemctl show -p InvocationID --value {unit}").strip()

    def put_phase(self, phase: int) -> None:
        """Start a test from a known phase, as a previous ramp would have left it (settings, state, service)."""
        count, conc = PHASES[phase]["xreadgroup_count"], PHASES[phase]["exec_concurrency"]
        state = json.dumps({"phase": phase, "xreadgroup_count": count, "exec_concurrency": conc, "status": "healthy"})
        self.ssh(f"sed -i 's/^XREADGROUP_COUNT=.*/XREADGROUP_COUNT={count}/; s/^EXEC_CONCURRENCY=.*/EXEC_CONCURRENCY={conc}/'"
                 f" {ENV_FILE} && mkdir -p {Path(STATE_FILE).parent} && echo '{state}' > {STATE_FILE}"
                 " && systemctl reset-failed quantum-execution; systemctl restart quantum-execution")

    def set_env(self, key: str, value: str | None, restart: bool = False) -> None:
        """Change one setting the way a test injects a fault; restart the execution unit only when asked."""
        cmd = f"sed -i '/^{key}=/d' {ENV_FILE}"
        if value is not None:
            cmd += f" && echo '{key}={value}' >> {ENV_FILE}"
        if restart:
            cmd += " && systemctl reset-failed quantum-execution; systemctl restart quantum-execution"
        self.ssh(cmd)


def out(res: subprocess.CompletedProcess[str]) -> str:
    """The playbook's output with YAML line folding undone, so that messages can be searched."""
    return re.sub(r"\n\s+", " ", res.stdout + res.stderr)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0 or shutil.which("systemd-nspawn") is None or shutil.which("ansible-playbook") is None:
        pytest.skip("the lab needs root, systemd-nspawn and ansible-playbook (make bootstrap)")
    host = RampLab(tmp_path_factory.mktemp("ramp"), HOST, IP, GATEWAY)
    host.down()  # a fresh host: no ramp state, phase 1 values, no fault left from an earlier run
    host.up()
    res = host.playbook("deploy.yml")
    assert res.returncode == 0, res.stdout[-3000:]
    yield host
    if not os.environ.get("QUANTUM_KEEP_LAB"):
        host.down()


def test_status_shows_the_phase_and_live_measurements(lab: RampLab) -> None:
    res = lab.playbook("ramp.yml", "-e", "phase=status")
    text = out(res)
    assert res.returncode == 0, text[-2000:]
    assert "phase 1 of 5 on qramp1 (no ramp state: phase inferred from the settings file)" in text
    assert "XREADGROUP_COUNT=10, EXEC_CONCURRENCY=1" in text and "1/10/1 · 2/20/1 · 3/30/1 · 4/30/2 · 5/50/4" in text
    assert re.search(r"live: lag \d+, pending \d+, results \+[\d.]+/s, error rate .* CPU [\d.]+ % \((cgroup|proc|systemd)\)", text), text


def test_walks_from_phase_1_to_5_with_live_traffic(lab: RampLab) -> None:
    engine = lab.invocation("quantum-ai-engine")
    res = lab.ramp("-e", "phase=1")
    assert res.returncode == 0 and "Phase 1 is already applied" in out(res)
    for phase in (2, 3, 4, 5):
        before = lab.invocation()
        res = lab.ramp("-e", f"phase={phase}")
        text = out(res)
        assert res.returncode == 0, text[-3000:]
        assert f"PHASE {phase} APPLIED AND HEALTHY on qramp1" in text and "gate of phase" in text
        count, conc = PHASES[phase]["xreadgroup_count"], PHASES[phase]["exec_concurrency"]
        assert f"P0.D.5 Config: INTENT_MAX_AGE_SEC=600, XREADGROUP_COUNT={count}, EXEC_CONCURRENCY={conc}" in text
        state = lab.state()
        assert (state["phase"], state["xreadgroup_count"], state["exec_concurrency"], state["status"]) == (
            phase, count, conc, "healthy")
        assert state["measurements"]["decision"] == "healthy" and state["measurements"]["rules"]["cpu_high"]["readable"]
        env = lab.env_values()
        assert (env["XREADGROUP_COUNT"], env["EXEC_CONCURRENCY"]) == (str(count), str(conc))
        assert lab.invocation() != before
    assert lab.invocation("quantum-ai-engine") == engine  # the AI engine was never restarted
    running = lab.invocation()
    res = lab.ramp("-e", "phase=5")
    assert res.returncode == 0 and "Phase 5 is already applied" in out(res) and lab.invocation() == running


def test_deploy_keeps_the_ramped_values(lab: RampLab) -> None:
    """deploy.yml reads the state file the ramp wrote: a redeploy does not silently undo the ramp."""
    assert lab.state()["phase"] == 5
    res = lab.playbook("deploy.yml")
    assert res.returncode == 0, out(res)[-3000:]
    assert "ramp phase 5" in out(res).lower() or "Ramp phase 5" in out(res)
    env = lab.env_values()
    assert (env["XREADGROUP_COUNT"], env["EXEC_CONCURRENCY"]) == ("50", "4")


def test_steps_down_freely_but_up_one_phase_at_a_time_and_dry_run_changes_nothing(lab: RampLab) -> None:
    res = lab.ramp("-e", "phase=2")  # less load: no gate needed
    assert res.returncode == 0 and "PHASE 2 APPLIED AND HEALTHY" in out(res)
    running, env = lab.invocation(), lab.env_values()
    res = lab.ramp("-e", "phase=4")
    assert res.returncode != 0
    assert "REFUSED on qramp1: the ramp is at phase 2 and moves one phase at a time; phase 4 skips 1 phase(s)" in out(res)
    res = lab.ramp("-e", "phase=3", "-e", "dry_run=true")
    text = out(res)
    assert res.returncode == 0 and "DRY RUN on qramp1: nothing changed" in text
    assert "would set XREADGROUP_COUNT 20 -> 30, EXEC_CONCURRENCY 1 -> 1" in text and "gate: HEALTHY" in text
    assert lab.invocation() == running and lab.env_values() == env and lab.state()["phase"] == 2


def test_error_rate_above_5_percent_steps_back_to_the_previous_phase(lab: RampLab) -> None:
    lab.put_phase(2)
    lab.set_env("PAPER_FAIL_RATE", "0.3")  # takes effect when the ramp restarts the service
    try:
        res = lab.ramp("-e", "phase=3")
        text = out(res)
        assert res.returncode != 0, text[-3000:]
        assert "STEPPED BACK on qramp1: phase 3 broke error_rate_high" in text
        assert re.search(r"error rate (\d+\.\d+)% \(\d+/\d+\)", text)
        assert "Done: error rate above 5.0 % -> previous phase: XREADGROUP_COUNT 30 -> 20" in text
        state = lab.state()
        assert (state["phase"], state["xreadgroup_count"], state["status"]) == (2, 20, "stepped_back")
        assert lab.env_values()["XREADGROUP_COUNT"] == "20"
        # The service still fails 30 % of its orders: the gate refuses to advance and changes nothing.
        running = lab.invocation()
        res = lab.ramp("-e", "phase=3")
        assert res.returncode != 0 and "REFUSED on qramp1: phase 2 was not healthy" in out(res)
        assert "(error_rate_high); nothing changed" in out(res) and lab.invocation() == running
    finally:
        lab.set_env("PAPER_FAIL_RATE", None, restart=True)


def test_lag_increasing_steps_count_back(lab: RampLab) -> None:
    lab.put_phase(2)
    lab.set_env("PAPER_LATENCY_MS", "1000")  # one order a second against 5 intents/s from the AI engine
    try:
        res = lab.ramp("-e", "phase=3")
        text = out(res)
        assert res.returncode != 0, text[-3000:]
        assert "STEPPED BACK on qramp1: phase 3 broke lag_increasing" in text
        m = re.search(r"STEPPED BACK.*?backlog (\d+)→(\d+) \(slope \+([\d.]+)/s\)", text)
        assert m and int(m.group(2)) - int(m.group(1)) > 20, text
        assert "lag increasing -> XREADGROUP_COUNT one rung down: XREADGROUP_COUNT 30 -> 20, EXEC_CONCURRENCY 1 -> 1" in text
        state = lab.state()
        assert (state["phase"], state["xreadgroup_count"], state["exec_concurrency"]) == (3, 20, 1)
    finally:
        lab.set_env("PAPER_LATENCY_MS", "0", restart=True)


def test_cpu_above_80_percent_steps_concurrency_back(lab: RampLab) -> None:
    lab.put_phase(3)
    burn: dict[str, str] = {}
    burner = threading.Thread(target=lambda: burn.update(out=lab.ssh("bash -s", stdin=BURN_AFTER_RESTART)))
    burner.start()
    res = lab.ramp("-e", "phase=4")
    burner.join(120)
    text = out(res)
    assert "in the unit" in burn.get("out", ""), burn
    assert res.returncode != 0, text[-3000:]
    assert "STEPPED BACK on qramp1: phase 4 broke cpu_high" in text
    assert re.search(r"cpu mean [\d.]+% max (\d+\.\d)% \(\d/\d samples > 80(\.0)?%, (cgroup|proc|systemd)\)", text)
    assert "CPU above 80 % -> EXEC_CONCURRENCY one rung down: XREADGROUP_COUNT 30 -> 30, EXEC_CONCURRENCY 2 -> 1" in text
    state = lab.state()
    assert (state["phase"], state["xreadgroup_count"], state["exec_concurrency"]) == (4, 30, 1)


def test_unreadable_metrics_hold_the_ramp(lab: RampLab) -> None:
    lab.put_phase(3)
    running, env = lab.invocation(), lab.env_values()
    lab.ssh("systemctl stop redis-server")
    try:
        res = lab.ramp("-e", "phase=4")
        text = out(res)
        assert res.returncode != 0
        assert "HOLD on qramp1: cannot judge phase 3 because the metrics of" in text
        assert "nothing changed (no decision)" in text and "no sample could be read: Redis unreachable" in text
    finally:
        lab.ssh("systemctl start redis-server")
    assert lab.invocation() == running and lab.env_values() == env
