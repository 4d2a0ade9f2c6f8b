"""The monitoring role without a lab host: its inventory checks, and its templates rendered by Ansible and run.

* Bad inventory values stop ansible/monitoring.yml in its first play, with the variable named, before any host is
  contacted (the monitoring host here is an SSH address on loopback where nothing listens).
* The role's own tasks (validate.yml) and templates, rendered by ansible-playbook for an inventory of two execution
  hosts and a Redis host, drive the real programs on loopback: a redis-server with the read-only quantum-proof user,
  two execution services with METRICS_PORT, redis_exporter started from the rendered /etc/default file, and Prometheus
  2.42 started from the rendered prometheus.yml and flags with the shipped alert rules. Every target is up with its
  host label, every rule loads, every dashboard query runs, and a provoked dead letter fires its alert.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.monitoring import EXPORTER, PROMETHEUS, Procs, get_json
from support import DLQ, GROUP, INTENTS, RESULTS, ROOT, RedisServer, ServiceProcess, free_port, intent, wait_until, xadd

ANSIBLE = ROOT / "ansible"
ROLE = ANSIBLE / "roles" / "quantum_monitoring"
PLAYBOOK_BIN = Path(sys.executable).with_name("ansible-playbook")

RENDER = """
- name: Render the monitoring role's files into a directory
  hosts: quantum_monitoring
  gather_facts: false
  tasks:
    - name: Validate and compute the scrape targets as the role does
      ansible.builtin.include_role:
        name: quantum_monitoring
        tasks_from: validate.yml
        public: true
    - name: Render the templates
      ansible.builtin.template:
        src: "{{ role_dir }}/templates/{{ item.src }}"
        dest: "{{ out }}/{{ item.dest }}"
        mode: "0600"
      loop:
        - {src: prometheus.yml.j2, dest: prometheus.yml}
        - {src: prometheus.default.j2, dest: prometheus.default}
        - {src: prometheus-redis-exporter.default.j2, dest: exporter.default}
      no_log: true
"""


def inventory(tmp: Path, monitoring: dict, execution: dict[str, dict], extra: dict | None = None) -> Path:
    doc = {"all": {"vars": {"ansible_python_interpreter": sys.executable, **(extra or {})}, "children": {
        "quantum_monitoring": {"hosts": monitoring},
        "quantum_execution": {"hosts": execution},
        "quantum_redis": {"hosts": {"qfr-test": {"ansible_host": "127.0.0.1"}}},
    }}}
    path = tmp / "hosts.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def playbook(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_RETRY_FILES_ENABLED": "False"}
    return subprocess.run([str(PLAYBOOK_BIN), *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=ANSIBLE, env=env)


def unreachable_monitoring_host() -> dict:
    """An SSH address on loopback where nothing listens: any task that connects fails as UNREACHABLE."""
    return {"qmon-test": {"ansible_host": "127.0.0.1", "ansible_port": free_port(), "ansible_connection": "ssh"}}


@pytest.mark.parametrize("case", ["loopback_addr", "bad_port", "password_quote"])
def test_bad_inventory_values_stop_the_play_before_any_host_is_touched(tmp_path: Path, case: str) -> None:
    secret = "s3cr'et-" + os.urandom(4).hex()
    execution = {"qfx-a": {"ansible_host": "127.0.0.1", "quantum_env_extra": {"METRICS_PORT": 9108,
                                                                              "METRICS_ADDR": "0.0.0.0"}}}
    extra: dict[str, Any] = {}
    if case == "loopback_addr":
        execution["qfx-b"] = {"ansible_host": "127.0.0.1", "quantum_env_extra": {"METRICS_PORT": 9108}}
        want = ["qfx-b serves its metrics on METRICS_ADDR=127.0.0.1", "quantum_env_extra.METRICS_ADDR"]
    elif case == "bad_port":
        execution["qfx-a"]["quantum_env_extra"]["METRICS_PORT"] = "ninety"
        want = ["METRICS_PORT of qfx-a (quantum_env_extra.METRICS_PORT) = ninety is invalid"]
    else:
        extra["quantum_redis_password_proof"] = secret
        want = ["quantum_monitoring_redis_password contains a quote"]
    inv = inventory(tmp_path, unreachable_monitoring_host(), execution, extra)
    proc = playbook("-i", inv, "monitoring.yml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for text in want:
        assert text in " ".join(out.split()), out[-3000:]
    assert "Check the monitoring inventory values before any host is touched" in out
    assert "UNREACHABLE" not in out and "Prometheus and redis_exporter" not in out, "a host was contacted"
    assert secret not in out


def test_a_valid_inventory_passes_the_checks(tmp_path: Path) -> None:
    """The same checks accept a good inventory: the play gets as far as connecting to the (absent) host."""
    execution = {"qfx-a": {"ansible_host": "127.0.0.1", "quantum_env_extra": {"METRICS_PORT": 9108,
                                                                              "METRICS_ADDR": "0.0.0.0"}}}
    inv = inventory(tmp_path, unreachable_monitoring_host(), execution)
    proc = playbook("-i", inv, "monitoring.yml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "UNREACHABLE" in out, out[-3000:]


def test_no_monitoring_group_is_a_no_op(tmp_path: Path) -> None:
    doc = {"all": {"children": {"quantum_execution": {"hosts": {"qfx-a": {"ansible_host": "127.0.0.1"}}}}}}
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump(doc))
    proc = playbook("-i", inv, "monitoring.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipping: no hosts matched" in proc.stdout


def parse_env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile as systemd reads these simple ones: KEY=value, optional quotes, # comments."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = shlex.split(value)[0] if value else ""
    return env


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.stop()


@pytest.mark.skipif(PROMETHEUS is None or EXPORTER is None,
                    reason="needs Debian's prometheus (bootstrap installs it) and prometheus-redis-exporter "
                           "(apt-get install prometheus-redis-exporter; the role installs it on monitoring hosts)")
def test_rendered_role_runs_prometheus_scraping_every_target_and_firing_an_alert(tmp_path: Path,
                                                                                 procs: Procs) -> None:
    server = RedisServer().start()
    services: list[ServiceProcess] = []
    try:
        r = server.client()
        password = os.urandom(12).hex()
        defaults = yaml.safe_load((ANSIBLE / "roles/quantum_redis/defaults/main.yml").read_text())
        rules = f"{defaults['quantum_redis_acl_connection']} {defaults['quantum_redis_acl_proof']}".split()
        if "+select" not in rules:
            rules.append("+select")  # what the exporter needs beyond the proof's own rules (see test_alert_rules.py)
        r.execute_command("ACL", "SETUSER", "quantum-proof", "reset", "on", f">{password}", *rules)

        ports = {"qfx-a": free_port(), "qfx-b": free_port()}
        for host, port in ports.items():
            services.append(ServiceProcess(server.url, METRICS_PORT=port, METRICS_ADDR="127.0.0.1",
                                           CONSUMER_NAME=f"{host}-1").start())
        prom_port, exp_port = free_port(), free_port()
        out = tmp_path / "rendered"
        out.mkdir()
        rules_dir = tmp_path / "rules"
        rules_dir.mkdir()
        shutil.copy(ROLE / "files" / "quantum_alerts.yml", rules_dir / "quantum_alerts.yml")
        execution = {
            # the monitoring host itself: its loopback endpoint is reachable
            "qfx-a": {"ansible_host": "127.0.0.1", "quantum_env_extra": {"METRICS_PORT": ports["qfx-a"],
                                                                         "METRICS_ADDR": "127.0.0.1"}},
            # another host listening on all its addresses: scraped at its ansible_host
            "qfx-b": {"ansible_host": "127.0.0.1", "quantum_env_extra": {"METRICS_PORT": ports["qfx-b"],
                                                                         "METRICS_ADDR": "0.0.0.0"}},
        }
        extra = {
            "quantum_redis_password_proof": password, "quantum_monitoring_redis_port": server.port,
            "quantum_monitoring_rules_dir": str(rules_dir), "quantum_monitoring_prometheus_config": str(out / "prometheus.yml"),
            "quantum_monitoring_prometheus_listen_address": f"127.0.0.1:{prom_port}",
            "quantum_monitoring_exporter_listen_address": f"127.0.0.1:{exp_port}",
            "quantum_monitoring_scrape_interval": "1s", "quantum_monitoring_evaluation_interval": "1s",
            "quantum_monitoring_external_labels": {"site": "test"},
        }
        inv = inventory(tmp_path, {"qfx-a": {"ansible_connection": "local"}}, execution, extra)
        (tmp_path / "render.yml").write_text(RENDER)
        proc = playbook("-i", inv, tmp_path / "render.yml", "-e", f"out={out}", "-e", f"role_dir={ROLE}")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert password not in proc.stdout + proc.stderr

        exporter_env = parse_env_file(out / "exporter.default")
        assert exporter_env["REDIS_PASSWORD"] == password and password not in exporter_env["ARGS"]
        assert exporter_env["REDIS_ADDR"] == f"redis://127.0.0.1:{server.port}"
        assert exporter_env["REDIS_USER"] == "quantum-proof"
        check = subprocess.run(["promtool", "check", "config", str(out / "prometheus.yml")], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr

        procs.start([EXPORTER, *shlex.split(exporter_env.pop("ARGS"))], {**os.environ, **exporter_env},
                    tmp_path / "exporter.log")
        prom_args = shlex.split(parse_env_file(out / "prometheus.default")["ARGS"])
        procs.start([PROMETHEUS, *prom_args, f"--storage.tsdb.path={tmp_path / 'tsdb'}"], dict(os.environ),
                    tmp_path / "prometheus.log")
        api = f"http://127.0.0.1:{prom_port}/api/v1"

        def targets_up() -> list[dict] | None:
            try:
                active = get_json(f"{api}/targets")["data"]["activeTargets"]
            except OSError:
                return None
            return active if len(active) == 4 and all(t["health"] == "up" for t in active) else None

        active = wait_until(targets_up, 60, 0.5, "all four targets up: " + (tmp_path / "prometheus.log").read_text()[-1500:])
        seen = sorted((t["labels"]["job"], t["labels"]["host"], t["labels"]["instance"]) for t in active)
        assert seen == sorted([
            ("quantum_execution", "qfx-a", f"127.0.0.1:{ports['qfx-a']}"),
            ("quantum_execution", "qfx-b", f"127.0.0.1:{ports['qfx-b']}"),
            ("quantum_redis", "qfr-test", f"127.0.0.1:{exp_port}"),
            ("prometheus", "qfx-a", f"127.0.0.1:{prom_port}"),
        ])
        groups = get_json(f"{api}/rules")["data"]["groups"]
        loaded = [rule for g in groups for rule in g["rules"]]
        shipped = [rule for g in yaml.safe_load((ROLE / "files/quantum_alerts.yml").read_text())["groups"]
                   for rule in g["rules"]]
        assert len(loaded) == len(shipped) and all(rule["health"] != "err" for rule in loaded), loaded

        def query(expr: str) -> list[dict]:
            body = get_json(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))
            assert body["status"] == "success", (expr, body)
            return body["data"]["result"]

        def alerts(name: str) -> list[dict]:
            return [a for a in get_json(f"{api}/alerts")["data"]["alerts"] if a["labels"]["alertname"] == name]

        for n in range(20):
            xadd(r, intent(n))
        # the service's series carry their own stream/group/consumer labels plus the target's host
        executed = wait_until(lambda: sum(float(s["value"][1]) for s in query(
            'quantum_execution_intents_total{outcome="executed"}')) == 20 and query(
            'quantum_execution_intents_total{outcome="executed"}'), 30, 0.5, "20 executed intents in Prometheus")
        assert {s["metric"]["host"] for s in executed} == {"qfx-a", "qfx-b"}
        assert {(s["metric"]["stream"], s["metric"]["group"]) for s in executed} == {(INTENTS, GROUP)}
        assert {s["metric"]["consumer"] for s in executed} == {"qfx-a-1", "qfx-b-1"}
        cpu = query('process_cpu_seconds_total{job="quantum_execution"}')
        assert {s["metric"]["host"] for s in cpu} == {"qfx-a", "qfx-b"} and all(float(s["value"][1]) > 0 for s in cpu)
        consumers = wait_until(lambda: query(f'redis_stream_group_consumer_idle_seconds{{stream="{INTENTS}"}}'), 20,
                               0.5, "consumer metrics from the exporter")
        assert {s["metric"]["consumer"] for s in consumers} == {"qfx-a-1", "qfx-b-1"}
        assert all(s["metric"]["host"] == "qfr-test" for s in consumers)
        # the result stream appears once a service has committed; the exporter sees it at its next scrape
        wait_until(lambda: query(f'redis_stream_length{{stream="{RESULTS}"}}'), 20, 0.5, "the result stream's length")
        gap = wait_until(lambda: query("quantum:intent_delivery_gap_seconds"), 20, 0.5, "the recorded delivery gap")
        assert float(gap[0]["value"][1]) < 60 and gap[0]["metric"]["group"] == GROUP

        for panel in json.loads((ROLE / "files/dashboards/quantum-backlog.json").read_text())["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "1m")
                query(expr.replace("$host", ".*").replace("$group", ".*"))
        assert not alerts("QuantumDeadLettersAppearing")

        xadd(r, b"{not json")  # the service dead-letters it: the DLQ stream appears
        fired = wait_until(lambda: [a for a in alerts("QuantumDeadLettersAppearing") if a["state"] == "firing"],
                           30, 0.5, "QuantumDeadLettersAppearing to fire")
        assert fired[0]["labels"]["stream"] == DLQ and fired[0]["labels"]["host"] == "qfr-test"
        assert fired[0]["labels"]["severity"] == "warning"
        assert r.xlen(DLQ) == 1
        firing = {a["labels"]["alertname"] for a in get_json(f"{api}/alerts")["data"]["alerts"] if a["state"] == "firing"}
        assert firing == {"QuantumDeadLettersAppearing"}, firing
    finally:
        for svc in services:
            svc.stop()
        server.cleanup()
