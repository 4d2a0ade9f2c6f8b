"""The alert rules the monitoring role installs: valid for Prometheus, proven by `promtool test rules`, and written
only against metric names that really exist.

promtool comes from Debian's `prometheus` package, which scripts/bootstrap.sh installs on the control node; the tests
skip only where it is missing. The names of the execution service's metrics are read from its own registry
(consumer/metrics.py); redis_exporter's are the ones the Debian 12 package (1.45) exports with stream checks, and
`test_exporter_exports_the_names_the_rules_use` checks them against that exporter run against a real redis-server as
the read-only quantum-proof user, when the package is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis
import yaml

from support import DLQ, GROUP, INTENTS, RESULTS, ROOT, RedisServer, free_port, wait_until

ROLE = ROOT / "ansible" / "roles" / "quantum_monitoring"
RULES = ROLE / "files" / "quantum_alerts.yml"
RULE_TESTS = ROOT / "tests" / "promtool" / "quantum_alerts_test.yml"
PROMTOOL = shutil.which("promtool")
EXPORTER = shutil.which("prometheus-redis-exporter")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed: scripts/bootstrap.sh installs it (apt package prometheus)")

# redis_exporter 1.45 (Debian 12's prometheus-redis-exporter) with -check-streams on the three streams: the names the
# rules and the dashboard may use. Read from the exporter itself against Redis 7.0.15; it has no group lag metric.
EXPORTER_METRICS = frozenset({
    "redis_up", "redis_uptime_in_seconds", "redis_connected_clients", "redis_commands_processed_total",
    "redis_memory_used_bytes", "redis_memory_max_bytes", "redis_exporter_last_scrape_error",
    "redis_stream_length", "redis_stream_groups", "redis_stream_last_generated_id", "redis_stream_radix_tree_keys",
    "redis_stream_radix_tree_nodes", "redis_stream_group_consumers", "redis_stream_group_messages_pending",
    "redis_stream_group_last_delivered_id", "redis_stream_group_consumer_messages_pending",
    "redis_stream_group_consumer_idle_seconds",
})
# What the exporter asks for beyond the read-only user's rules; refused, it logs once and exports everything above.
EXPORTER_MAY_BE_REFUSED = frozenset({"config|get", "slowlog|get", "slowlog|len", "latency|latest"})
PROMETHEUS_METRICS = frozenset({"up", "scrape_duration_seconds"})  # what Prometheus records for every target
PROMQL_WORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                          "offset", "bool", "inf", "nan"})


def service_metric_names() -> set[str]:
    """Every sample name the execution service exposes, from its real registry after one committed batch."""
    from prometheus_client import generate_latest

    from consumer.metrics import OUTCOMES, Metrics

    m = Metrics(INTENTS, GROUP, "probe-1")
    m.enabled = True  # what start() does, without opening a port
    m.committed(Counter({o: 1 for o in OUTCOMES}), [0.01], 1)
    text = generate_latest(m.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def recorded_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def known_metric_names() -> set[str]:
    return service_metric_names() | EXPORTER_METRICS | PROMETHEUS_METRICS | recorded_names()


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label names, functions, keywords and durations removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    s = re.sub(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*\(", "(", s)  # function names
    s = re.sub(r"\b\d[\w.]*", " ", s)  # numbers and durations
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s) if w.lower() not in PROMQL_WORDS}


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)


@needs_promtool
def test_rules_file_is_valid_for_prometheus() -> None:
    proc = run(PROMTOOL, "check", "rules", str(RULES))
    groups = yaml.safe_load(RULES.read_text())["groups"]
    count = sum(len(g["rules"]) for g in groups)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {count} rules found" in proc.stdout


@needs_promtool
def test_promtool_rule_unit_tests_pass() -> None:
    proc = run(PROMTOOL, "test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_the_issue_s_alerts_are_all_there() -> None:
    names = {r["alert"] for r in alert_rules()}
    assert {"QuantumBacklogGrowing", "QuantumBacklogOld", "QuantumConsumerGoneHoldingEntries",
            "QuantumNoActiveConsumer", "QuantumErrorRateHigh", "QuantumDeadLettersAppearing",
            "QuantumResultsNotAdvancing", "QuantumRedisMemoryNearLimit"} <= names


def test_every_alert_has_a_duration_a_severity_and_a_runbook_text() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no for: duration"
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), name
        assert len(rule["annotations"].get("summary", "")) > 10, name
        assert len(rule["annotations"].get("description", "")) > 80, f"{name}: description should say what to do"


def test_every_alert_is_tested_firing_and_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for t in case.get("alert_rule_test", []):
            (fired if t.get("exp_alerts") else quiet).add(t["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - fired == set(), "alerts never provoked in tests/promtool/quantum_alerts_test.yml"
    assert names - quiet == set(), "alerts never shown quiet in tests/promtool/quantum_alerts_test.yml"


def test_no_rule_alerts_on_lag() -> None:
    """redis_exporter reports lag 0 when Redis cannot compute it (after deletions); backlog rules read entry ids."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        assert not any("lag" in name for name in metric_names(rule["expr"])), rule


def test_rules_read_only_metrics_that_exist() -> None:
    known = known_metric_names()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    used: set[str] = set()
    for rule in (r for g in groups for r in g["rules"]):
        names = metric_names(rule["expr"])
        assert names, rule
        unknown = names - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {sorted(unknown)}"
        used |= names
    assert "quantum_execution_intents_total" in used and "redis_stream_group_last_delivered_id" in used


def test_metric_name_extraction() -> None:
    expr = ('sum by (stream, group) (rate(x_total{outcome=~"failed|dead_lettered"}[5m])) / on (a) group_left () '
            'y offset 5m > 0.05 and deriv(z:rec[10m]) > 1e3')
    assert metric_names(expr) == {"x_total", "y", "z:rec"}


def test_service_exports_what_the_rules_count() -> None:
    names = service_metric_names()
    assert {"quantum_execution_intents_total", "quantum_execution_in_flight",
            "quantum_execution_latency_seconds_bucket", "process_cpu_seconds_total",
            "process_resident_memory_bytes"} <= names


def test_outcome_series_exist_at_zero_before_the_first_batch() -> None:
    """rate() needs a sample before the first failure: a series born at its first increment hides that increment,
    so the first dead letters or venue errors of an incident would not count towards QuantumErrorRateHigh."""
    from prometheus_client.parser import text_string_to_metric_families

    from consumer.metrics import OUTCOMES, Metrics

    port = free_port()
    m = Metrics(INTENTS, GROUP, "probe-2")
    m.start(port, "127.0.0.1")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {(s.name, s.labels.get("outcome")): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}
    for outcome in OUTCOMES:
        assert values[("quantum_execution_intents_total", outcome)] == 0, outcome
    assert values[("quantum_execution_in_flight", None)] == 0
    assert values[("quantum_execution_latency_seconds_count", None)] == 0
    m.committed(Counter({"executed": 2, "failed": 1}), [0.1, 0.2], 3)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'outcome="failed",stream="quantum:stream:trade.intent"} 1.0' in text


@pytest.mark.skipif(EXPORTER is None, reason="prometheus-redis-exporter not installed here (the role installs it on "
                    "the quantum_monitoring hosts; apt-get install prometheus-redis-exporter to run this)")
def test_exporter_exports_the_names_the_rules_use(tmp_path: Path) -> None:
    """The real exporter 1.45, started the way the role starts it, as quantum-proof with the role's ACL rules."""
    defaults = yaml.safe_load((ROOT / "ansible/roles/quantum_redis/defaults/main.yml").read_text())
    rules = f"{defaults['quantum_redis_acl_connection']} {defaults['quantum_redis_acl_proof']}".split()
    if "+select" not in rules and "+@all" not in rules:
        pytest.xfail("quantum_redis_acl_proof lacks +select: redis_exporter SELECTs the db before its stream checks "
                     "and exports no stream metric without it")
    server = RedisServer().start()
    exporter = None
    try:
        r = server.client()
        r.config_set("maxmemory", "64mb")
        password = os.urandom(12).hex()
        r.execute_command("ACL", "SETUSER", "quantum-proof", "reset", "on", f">{password}", *rules)
        for stream in (INTENTS, RESULTS, DLQ):
            r.xadd(stream, {"payload": "{}"})
        r.xgroup_create(INTENTS, GROUP, id="0")
        r.xreadgroup(GROUP, "qfx1-1", {INTENTS: ">"}, count=1)
        port = free_port()
        env = {**os.environ, "REDIS_ADDR": f"redis://127.0.0.1:{server.port}", "REDIS_USER": "quantum-proof",
               "REDIS_PASSWORD": password}
        args = [EXPORTER, "-check-streams", ",".join((INTENTS, RESULTS, DLQ)), "-set-client-name=false",
                "-redis-only-metrics", "-web.listen-address", f"127.0.0.1:{port}"]
        assert password not in " ".join(args)
        with open(tmp_path / "exporter.log", "wb") as log:
            exporter = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)

        def scrape() -> str | None:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                return None
            return text if "redis_stream_group_consumer_idle_seconds" in text else None

        text = wait_until(scrape, 30, 0.2, "redis_exporter to export stream metrics")
        exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
        assert EXPORTER_METRICS - exported == set(), (tmp_path / "exporter.log").read_text()
        assert re.search(r"^redis_up 1$", text, re.M)
        assert re.search(r'^redis_stream_group_consumer_messages_pending\{consumer="qfx1-1",db="db0",'
                         r'group="quantum-execution",stream="quantum:stream:trade.intent"\} 1$', text, re.M)
        assert re.search(r"^redis_memory_max_bytes 6.7108864e\+07$", text, re.M)
        # refused, harmlessly: CONFIG GET (settings stay private), SLOWLOG and LATENCY (their panels stay empty)
        refused = {e["object"] for e in r.acl_log()}
        assert refused <= EXPORTER_MAY_BE_REFUSED, refused
    finally:
        if exporter is not None:
            exporter.terminate()
            exporter.wait(10)
        server.cleanup()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
