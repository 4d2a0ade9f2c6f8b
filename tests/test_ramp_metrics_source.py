"""The ramp's metrics source in Ansible, without a lab host: the default follows the inventory (prometheus when it
names a quantum_monitoring host, at that host's address; the proof's own sampling otherwise), and a bad value stops
ramp.yml on the control node with the variable named, before the execution host is contacted (its SSH address is a
loopback port where nothing listens, so any connection would show as UNREACHABLE)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import ROOT, free_port

ANSIBLE = ROOT / "ansible"
PLAYBOOK_BIN = Path(sys.executable).with_name("ansible-playbook")


def inventory(tmp: Path, monitoring: dict | None, host_vars: dict | None = None) -> Path:
    children: dict[str, Any] = {"quantum_execution": {"hosts": {"qrx-a": {
        "ansible_host": "127.0.0.1", "ansible_port": free_port(), "ansible_connection": "ssh", **(host_vars or {})}}}}
    if monitoring is not None:
        children["quantum_monitoring"] = {"hosts": monitoring}
    path = tmp / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"vars": {"ansible_python_interpreter": sys.executable},
                                            "children": children}}))
    return path


def ramp(inv: Path, *args: str) -> str:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOST_KEY_CHECKING": "False",
           "ANSIBLE_RETRY_FILES_ENABLED": "False"}
    proc = subprocess.run([str(PLAYBOOK_BIN), "-i", str(inv), "ramp.yml", "-e", "phase=2", *args], cwd=ANSIBLE,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    return " ".join((proc.stdout + proc.stderr).split())


@pytest.mark.parametrize("case", ["unknown_source", "prometheus_without_monitoring", "bad_url"])
def test_a_bad_metrics_source_stops_the_ramp_before_the_host_is_contacted(tmp_path: Path, case: str) -> None:
    if case == "unknown_source":
        inv, args = inventory(tmp_path, None), ("-e", "quantum_ramp_metrics_source=graphite")
        want = "quantum_ramp_metrics_source=graphite must be proof or prometheus"
    elif case == "prometheus_without_monitoring":
        inv, args = inventory(tmp_path, None), ("-e", "quantum_ramp_metrics_source=prometheus")
        want = "quantum_ramp_prometheus_url='' must be an http(s) URL of Prometheus"
    else:
        inv = inventory(tmp_path, {"qrm": {"ansible_host": "192.0.2.7"}},
                        {"quantum_ramp_prometheus_url": "192.0.2.7:9090"})
        args = ()
        want = "quantum_ramp_prometheus_url='192.0.2.7:9090' must be an http(s) URL of Prometheus"
    out = ramp(inv, *args)
    assert want in out, out[-3000:]
    assert "Check the ramp's variables before the host is touched" in out
    assert "UNREACHABLE" not in out, "the host was contacted"


@pytest.mark.parametrize("monitoring,source,url", [
    (None, "proof", ""),
    ({"qrm": {"ansible_host": "192.0.2.7"}}, "prometheus", "http://192.0.2.7:9090"),
    ({"qrm": {"ansible_host": "192.0.2.7", "quantum_monitoring_prometheus_listen_address": "192.0.2.8:9099"}},
     "prometheus", "http://192.0.2.8:9099"),
])
def test_the_default_source_follows_the_inventory(tmp_path: Path, monitoring: dict | None, source: str,
                                                  url: str) -> None:
    """The checks pass (the play gets as far as the absent host) with the source and URL the inventory implies."""
    inv = inventory(tmp_path, monitoring)
    out = ramp(inv)
    assert "UNREACHABLE" in out, out[-3000:]
    msg = "msg={{ [quantum_ramp_metrics_source, quantum_ramp_prometheus_url | trim] }}"
    show = subprocess.run([str(Path(sys.executable).with_name("ansible")), "qrx-a", "-i", str(inv), "-m",
                           "ansible.builtin.debug", "-a", msg,
                           "-e", "@" + str(ANSIBLE / "roles/quantum_ramp/defaults/main.yml")],
                          cwd=ANSIBLE, capture_output=True, text=True, timeout=60)
    assert show.returncode == 0, show.stdout + show.stderr
    shown = yaml.safe_load(show.stdout.split("=>", 1)[1])["msg"]
    assert shown == [source, url], show.stdout
