"""The fleet lab: several lab hosts on one private bridge and subnet reach each other and the control node and nothing
else, each in a cgroup of its own; a host stopped hard boots again with its state; a partition cuts one host off and heals; a bad fleet inventory
fails before anything is built; the tear-down leaves no namespace, veth, bridge, mount, process or directory.

Runs on its own fleet: qtf-r, qtf-x1, qtf-x2 on 10.213.71.0/24, bridge qtfbr0 (and qtf-b1/qtf-b2, never built).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from quantum_labkit import Fleet, FleetHost, fresh, lab_traces, recap, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]
NAMES = ["qtf-r", "qtf-x1", "qtf-x2"]
SUBNET, BRIDGE, GATEWAY = "10.213.71.0/24", "qtfbr0", "10.213.71.1"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    yield from fresh(lambda: Fleet(tmp_path_factory.mktemp("fleet"), NAMES, SUBNET, BRIDGE), up=False)


def reaches(src: FleetHost, ip: str, port: int = 22) -> bool:
    """A TCP connection from src to ip:port succeeds (bash's /dev/tcp: no tools needed on the host)."""
    return src.sh(f"timeout 3 bash -c '</dev/tcp/{ip}/{port}'", check=False).returncode == 0


def nothing_left(name: str) -> None:
    t = lab_traces(name, BRIDGE)
    assert t["nspawn_pid"] is None and not t["netns"] and not t["link"] and not t["mounts"] and not t["dir"], t
    assert not t["cgroups"], t
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert subprocess.run(["ip", "link", "show", f"vq-{name}"[:15]], capture_output=True).returncode != 0
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f"/hosts/{name}/" not in mounts and f"netns/{name} " not in mounts
    assert f"--machine={name}" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def test_fleet_comes_up_on_one_bridge_with_no_route_out(fleet: Fleet) -> None:
    started = time.monotonic()
    res = fleet.up()
    print(f"fleet of {len(NAMES)} built in {time.monotonic() - started:.1f}s")
    flat = " ".join(res.stdout.split())
    for name, host in fleet.hosts.items():
        assert f"Lab host {name} is running at {host.ip}" in flat
        assert host.out("systemctl is-system-running") == "running"
        assert host.out("hostname") == name
        # One connected subnet and no default route: nothing but the bridge's subnet is reachable.
        assert host.out("ip -4 route") == f"10.213.71.0/24 dev eth0 proto kernel scope link src {host.ip}"
        assert host.sh("ip route get 192.0.2.2", check=False).returncode != 0
    for name in NAMES:  # every process of a host lives in the host's own cgroup, never in one shared with another host
        pids = lab_traces(name, BRIDGE)["netns_pids"]
        assert pids
        for pid in pids:
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
            assert f"::/quantum-lab/{name}/" in cgroup, (name, pid, cgroup)
    ports = set(lab_traces(NAMES[0], BRIDGE)["bridge_ports"])
    assert ports == {f"vq-{n}" for n in NAMES}, ports
    addrs = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE], capture_output=True, text=True).stdout
    assert f"inet {GATEWAY}/24 " in addrs
    for name in NAMES:  # the veths carry no address: the gateway lives on the bridge, once
        veth = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", f"vq-{name}"], capture_output=True, text=True)
        assert veth.stdout.strip() == ""


def test_every_host_reaches_every_other_host_and_the_control_node(fleet: Fleet) -> None:
    with socket.create_server((GATEWAY, 0)) as server:
        port = server.getsockname()[1]
        seen: list[str] = []

        def accept() -> None:
            server.settimeout(60)
            for _ in NAMES:
                conn, addr = server.accept()
                seen.append(addr[0])
                conn.close()

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        for src in fleet.hosts.values():
            for dst in fleet.hosts.values():
                if dst is not src:
                    assert reaches(src, dst.ip), f"{src.name} cannot reach {dst.name} at {dst.ip}"
            assert reaches(src, GATEWAY, port), f"{src.name} cannot reach the control node at {GATEWAY}:{port}"
        t.join(10)
    assert sorted(seen) == sorted(h.ip for h in fleet.hosts.values())


def test_a_partitioned_host_is_cut_off_and_comes_back(fleet: Fleet) -> None:
    r, x1 = fleet["qtf-r"], fleet["qtf-x1"]
    fleet.partition("qtf-x1")
    try:
        assert not reaches(r, x1.ip)
        assert x1.traces()["nspawn_pid"], "a partitioned host keeps running"
    finally:
        fleet.heal("qtf-x1")
    assert reaches(r, x1.ip) and reaches(x1, r.ip)


def test_a_killed_host_boots_again_with_its_state(fleet: Fleet) -> None:
    x2, r = fleet["qtf-x2"], fleet["qtf-r"]
    token = uuid.uuid4().hex
    x2.sh(f"echo {token} > /var/lib/fleet-test-state && sync")
    boot_id = x2.out("cat /proc/sys/kernel/random/boot_id")
    others = {n: fleet[n].traces()["nspawn_pid"] for n in ("qtf-r", "qtf-x1")}
    fleet.kill_host("qtf-x2")
    t = x2.traces()
    assert t["nspawn_pid"] is None and not t["netns_pids"] and t["intact"], t
    assert not reaches(r, x2.ip)
    started = time.monotonic()
    res = fleet.boot_host("qtf-x2")
    print(f"booted again in {time.monotonic() - started:.1f}s")
    assert "booting it again with its state" in " ".join(res.stdout.split())
    assert x2.out("cat /var/lib/fleet-test-state") == token
    assert x2.out("cat /proc/sys/kernel/random/boot_id") != boot_id
    assert x2.out("systemctl is-system-running") == "running"
    assert reaches(r, x2.ip) and reaches(x2, r.ip)
    assert {n: fleet[n].traces()["nspawn_pid"] for n in others} == others, "the other hosts were left alone"
    # A second run reuses the whole fleet untouched.
    again = fleet.up()
    for name in NAMES:
        assert recap(again.stdout, name)["changed"] == 0


def test_a_bad_fleet_inventory_fails_before_anything_is_built(tmp_path: Path) -> None:
    bad = Fleet(tmp_path, ["qtf-b1", "qtf-b2"], SUBNET, BRIDGE, host_vars={"qtf-b2": {"ansible_host": "10.213.71.11"}})
    res = bad.playbook("lab.yml")
    assert res.returncode != 0
    assert "The lab hosts of this play clash" in " ".join(res.stdout.split())
    outside = Fleet(tmp_path / "o", ["qtf-b1"], SUBNET, BRIDGE, host_vars={"qtf-b1": {"ansible_host": "10.213.79.11"}})
    res = outside.playbook("lab.yml")
    assert res.returncode != 0
    assert "must be two different host addresses of one /24" in " ".join(res.stdout.split())
    for name in ("qtf-b1", "qtf-b2"):
        nothing_left(name)


def test_teardown_leaves_nothing_behind_and_is_repeatable(fleet: Fleet) -> None:
    res = fleet.down()
    assert res.returncode == 0, res.stdout[-4000:]
    assert f"bridge {BRIDGE} gone" in " ".join(res.stdout.split())
    for name in NAMES:
        nothing_left(name)
    assert not fleet.bridge_exists()
    again = fleet.down()
    assert again.returncode == 0
    for name in NAMES:
        assert recap(again.stdout, name)["changed"] == 0
    assert wait_until(lambda: not fleet.bridge_exists(), 5, what="bridge gone")
