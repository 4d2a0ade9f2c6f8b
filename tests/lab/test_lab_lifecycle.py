"""The lab playbooks: build (cached root filesystem), reuse when running, boot a stopped host again with its state,
rebuild one whose root filesystem is damaged (or on request), recover from a leftover namespace, and a tear-down that
leaves no process, network namespace, veth, mount or directory behind.

Runs on its own lab host (qlt1, 10.213.62.0/30).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from quantum_labkit import LAB_HOSTS, LabHost, fresh, recap, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]
NAME, IP, GATEWAY = "qlt1", "10.213.62.2", "10.213.62.1"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    yield from fresh(lambda: LabHost(tmp_path_factory.mktemp("lablife"), NAME, IP, GATEWAY), up=False)


def nothing_left(lab: LabHost) -> None:
    t = lab.traces()
    assert t["nspawn_pid"] is None and not t["netns"] and not t["link"] and not t["mounts"] and not t["dir"], t
    assert NAME not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", f"vq-{NAME}"], capture_output=True).returncode != 0
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f"/hosts/{NAME}/" not in mounts and f"netns/{NAME}" not in mounts
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"--machine={NAME}" not in procs


def test_build_boots_a_systemd_host_reachable_over_ssh(lab: LabHost) -> None:
    started = time.monotonic()
    res = lab.up()
    took = time.monotonic() - started
    print(f"lab build took {took:.1f}s")
    assert f"Lab host {NAME} is running at {IP}" in " ".join(res.stdout.split())
    assert lab.out("systemctl is-system-running") == "running"
    assert lab.out("readlink /proc/1/exe") == "/usr/lib/systemd/systemd"  # systemd is PID 1
    assert lab.out("systemctl is-active redis-server ssh") == "active\nactive"
    assert lab.out("systemctl is-enabled redis-server") == "enabled"
    assert lab.out("hostname") == NAME
    assert lab.out("python3 -c 'import ensurepip, venv; print(1)'") == "1"
    # No route out: the host can reach the control node's end of its /30 and nothing else.
    assert lab.out("ip route").strip() == f"10.213.62.0/30 dev eth0 proto kernel scope link src {IP}"
    t = lab.traces()
    assert t["nspawn_pid"] and t["netns"] and t["link"] and t["rootfs"], t


def test_second_run_reuses_the_running_host_and_changes_nothing(lab: LabHost) -> None:
    boot_id = lab.out("cat /proc/sys/kernel/random/boot_id; systemctl show -p ActiveEnterTimestampMonotonic --value init.scope")
    pid = lab.traces()["nspawn_pid"]
    started = time.monotonic()
    res = lab.up()
    print(f"second lab.yml run took {time.monotonic() - started:.1f}s")  # reuse is proven below, not by the clock
    assert f"Lab host {NAME} is running (systemd-nspawn pid {pid}): reusing it" in " ".join(res.stdout.split())
    assert recap(res.stdout, NAME)["changed"] == 0
    assert lab.traces()["nspawn_pid"] == pid
    assert lab.out("cat /proc/sys/kernel/random/boot_id; systemctl show -p ActiveEnterTimestampMonotonic --value init.scope") == boot_id


def kill_nspawn(lab: LabHost) -> int:
    pid = lab.traces()["nspawn_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: lab.traces()["nspawn_pid"] is None, 20, what="nspawn gone")
    return pid


def test_half_torn_down_lab_is_recovered(lab: LabHost) -> None:
    """systemd-nspawn killed hard: the namespace, the veth and the container's processes stay behind. The root
    filesystem is intact, so the host boots again with its state (what it wrote is still there)."""
    lab.sh("echo kept > /var/lib/lifecycle-state && sync")
    pid = kill_nspawn(lab)
    t = lab.traces()
    assert t["netns"] and t["link"] and t["dir"] and t["intact"], f"expected leftovers to recover from: {t}"
    res = lab.up()
    assert "left traces" in " ".join(res.stdout.split())
    assert "booting it again with its state" in " ".join(res.stdout.split())
    new = lab.traces()
    assert new["nspawn_pid"] and new["nspawn_pid"] != pid
    assert lab.out("systemctl is-system-running") == "running"
    assert lab.out("cat /var/lib/lifecycle-state") == "kept"


def test_stopped_host_with_a_damaged_root_filesystem_is_built_afresh(lab: LabHost) -> None:
    """No completion marker (e.g. an unpack that was interrupted): nothing of the old tree is trusted."""
    kill_nspawn(lab)
    (LAB_HOSTS / NAME / "rootfs.complete").unlink()
    assert not lab.traces()["intact"]
    res = lab.up()
    assert "root filesystem is not intact; clearing them and building it afresh" in " ".join(res.stdout.split())
    assert lab.sh("test -e /var/lib/lifecycle-state", check=False).returncode == 1
    assert lab.out("systemctl is-system-running") == "running"


def test_rebuild_replaces_a_running_host(lab: LabHost) -> None:
    lab.sh("echo old > /var/lib/lifecycle-state")
    pid = lab.traces()["nspawn_pid"]
    res = lab.playbook("lab.yml", "-e", "quantum_lab_rebuild=true")
    assert res.returncode == 0, res.stdout[-4000:]
    assert "quantum_lab_rebuild is set" in " ".join(res.stdout.split())
    assert lab.traces()["nspawn_pid"] != pid
    assert lab.sh("test -e /var/lib/lifecycle-state", check=False).returncode == 1


def test_teardown_leaves_nothing_behind_and_is_repeatable(lab: LabHost) -> None:
    res = lab.down()
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"Lab host {NAME} is gone" in " ".join(res.stdout.split())
    nothing_left(lab)
    again = lab.down()
    assert again.returncode == 0 and recap(again.stdout, NAME)["changed"] == 0
    nothing_left(lab)


def test_leftover_namespace_without_processes_is_cleared_on_build(lab: LabHost) -> None:
    """A namespace and veth that outlived everything else (e.g. a crashed tear-down) do not block a new build."""
    subprocess.run(["ip", "netns", "add", NAME], check=True)
    subprocess.run(["ip", "link", "add", f"vq-{NAME}", "type", "veth", "peer", "name", "eth0", "netns", NAME], check=True)
    started = time.monotonic()
    res = lab.up()
    print(f"cached lab build took {time.monotonic() - started:.1f}s")
    assert "left traces" in " ".join(res.stdout.split())
    assert lab.out("systemctl is-system-running") == "running"
    assert lab.down().returncode == 0
    nothing_left(lab)
