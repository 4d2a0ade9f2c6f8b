"""The ramp's Prometheus source against real parts: a redis-server, the execution service with METRICS_PORT, Debian's
redis_exporter and Prometheus scraping both every second. The proof's own sampling and the Prometheus source observe
the same window at the same time and must reach the same verdict with close figures: a healthy drain of a backlog
under live traffic, and venue errors (PAPER_FAIL_RATE) that must step the ramp back. An unreachable Prometheus holds.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from harness.monitoring import EXPORTER, PROMETHEUS, Procs, Prometheus, start_exporter
from support import GROUP, INTENTS, ROOT, RedisServer, ServiceProcess, free_port, intent, wait_until, xadd

from consumer.proof.config import ProofSettings
from consumer.proof.observe import Thresholds, observe
from consumer.proof.promsource import PromSource, cumulative, thin

pytestmark = [pytest.mark.timeout(240), pytest.mark.skipif(
    PROMETHEUS is None or EXPORTER is None, reason="needs Debian's prometheus and prometheus-redis-exporter "
                                                   "(scripts/bootstrap.sh installs both)")]
HOST = "qps-exec"
# The rate limit lets the service read in bursts at the start of each 1 s window; each proof sample (half the
# interval) must span more than one window, or it may fall between two bursts and rightly call that instant stalled.
WINDOW, INTERVAL = 12.0, 2.5
TH = Thresholds(error_min_consumed=20)

CONFIG = """
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: quantum_execution
    static_configs: [{{targets: ["127.0.0.1:{metrics}"], labels: {{host: {host}}}}}]
  - job_name: quantum_redis
    static_configs: [{{targets: ["{exporter}"], labels: {{host: qps-redis}}}}]
"""


class Publisher(threading.Thread):
    """Valid intents at a steady rate, as the AI engine publishes them, until stopped."""

    def __init__(self, r: redis.Redis, rate: float, prefix: str) -> None:
        super().__init__(daemon=True)
        self.r, self.rate, self.prefix = r, rate, prefix
        self.stopped = threading.Event()

    def run(self) -> None:
        start, k = time.monotonic(), 0
        while not self.stopped.is_set():
            xadd(self.r, intent(f"{self.prefix}-{k:08d}"))
            k += 1
            time.sleep(max(0.0, start + k / self.rate - time.monotonic()))

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


@dataclasses.dataclass
class Stack:
    server: RedisServer
    prometheus: Prometheus
    metrics_port: int
    settings: ProofSettings


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("promsource")
    procs = Procs()
    server = RedisServer().start()
    try:
        exporter = start_exporter(procs, tmp, f"redis://127.0.0.1:{server.port}", [INTENTS])
        metrics = free_port()
        prom = Prometheus(procs, tmp, CONFIG.format(metrics=metrics, host=HOST, exporter=exporter))
        settings = dataclasses.replace(ProofSettings.from_env({}), redis_url=server.url, systemd=False,
                                       state_dir=tmp / "state")
        yield Stack(server, prom, metrics, settings)
    finally:
        procs.stop()
        server.cleanup()


def both(stack: Stack, pid: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The proof's sampling and the Prometheus source over the same window, side by side."""
    src = PromSource(stack.prometheus.url, host=HOST, settle_sec=20)
    common = dict(window=WINDOW, interval=INTERVAL, pid=pid)
    with ThreadPoolExecutor(2) as pool:
        proof = pool.submit(observe, stack.settings, TH, **common)
        prom = pool.submit(observe, stack.settings, TH, prometheus=src, **common)
        return proof.result(), prom.result()


def figures(res: dict[str, Any]) -> str:
    rules, lag = res["rules"], res["rules"]["lag_increasing"]
    return (f"{res['source']['name']}: {res['decision']} fired={res['fired']} samples={res['samples']} "
            f"backlog growth={lag.get('growth')} slope={lag.get('slope_per_sec')} "
            f"errors={rules['error_rate_high'].get('errors')}/{rules['error_rate_high'].get('consumed')} "
            f"cpu mean={rules['cpu_high'].get('mean')} verdicts: {rules['unhealthy'].get('detail')}")


def run_service(stack: Stack, **env: Any) -> ServiceProcess:
    """The service with its metrics endpoint, once Prometheus has scraped this very process."""
    svc = ServiceProcess(stack.server.url, METRICS_PORT=stack.metrics_port, METRICS_ADDR="127.0.0.1",
                         CONSUMER_NAME=f"{HOST}-{time.monotonic_ns()}", **env).start()
    name = svc.env["CONSUMER_NAME"]
    stack.prometheus.wait_targets_up(2)
    wait_until(lambda: stack.prometheus.query(f'quantum_execution_intents_total{{consumer="{name}"}}'), 30, 0.5,
               "Prometheus scraping the new service")
    return svc


def under_traffic(stack: Stack, rate: float, prefix: str, **env: Any) -> tuple[dict, dict]:
    """A service with ``env`` while intents arrive at ``rate``/s: what each source observed over the same window."""
    svc = run_service(stack, **env)
    pub = Publisher(stack.server.client(), rate, prefix)
    pub.start()
    try:
        proof, prom = both(stack, svc.pid)
    finally:
        pub.stop()
        svc.stop()
    print(figures(proof), figures(prom), sep="\n")
    return proof, prom


def test_a_healthy_drain_is_healthy_from_both_sources_with_the_same_figures(stack: Stack) -> None:
    r = stack.server.client()
    for n in range(1500):  # a backlog to drain: the service reads 100/s (rate limit), 20/s arrive
        xadd(r, intent(f"backlog-{n:06d}"))
    proof, prom = under_traffic(stack, 20, "live", RATE_LIMIT_MAX=100)
    assert proof["decision"] == prom["decision"] == "healthy", (proof["summary"], prom["summary"])
    lag_p, lag_m = proof["rules"]["lag_increasing"], prom["rules"]["lag_increasing"]
    # the backlog drains at about 80 entries/s in both views
    assert lag_p["growth"] < -400 and lag_m["growth"] < -400, (lag_p, lag_m)
    assert abs(lag_p["slope_per_sec"] - lag_m["slope_per_sec"]) < 0.25 * abs(lag_p["slope_per_sec"]), (lag_p, lag_m)
    err_p, err_m = proof["rules"]["error_rate_high"], prom["rules"]["error_rate_high"]
    assert err_p["errors"] == err_m["errors"] == 0
    assert abs(err_p["consumed"] - err_m["consumed"]) < 0.25 * err_p["consumed"], (err_p, err_m)
    assert prom["rules"]["cpu_high"]["readable"] and prom["rules"]["cpu_high"]["source"].startswith("prometheus")
    assert prom["source"] == {"name": "prometheus", "url": stack.prometheus.url, "host": HOST,
                              "job": "quantum_execution", "backlog_basis": prom["source"]["backlog_basis"]}


def test_venue_errors_are_unhealthy_from_both_sources_with_the_same_error_rate(stack: Stack) -> None:
    proof, prom = under_traffic(stack, 40, "failing", PAPER_FAIL_RATE=0.5)
    assert proof["decision"] == prom["decision"] == "unhealthy", (proof["summary"], prom["summary"])
    assert proof["fired"] == prom["fired"] == ["error_rate_high"]
    err_p, err_m = proof["rules"]["error_rate_high"], prom["rules"]["error_rate_high"]
    assert 0.3 < err_p["value"] < 0.7 and abs(err_p["value"] - err_m["value"]) < 0.1, (err_p, err_m)
    # steady traffic the service keeps up with: the group is caught up, so Prometheus's backlog is absolute
    assert prom["source"]["backlog_basis"] == "anchored"
    assert max(p["backlog"] for p in prom["points"]) < 50, prom["points"]


def test_an_unreachable_prometheus_holds_exit_3(stack: Stack, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": stack.server.url, "PROOF_METRICS_SOURCE": "prometheus",
           "PROOF_PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}", "PROOF_STATE_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "consumer.proof", "observe", "--json", "--window", "1",
                          "--interval", "0.5"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 3, res.stderr
    out = json.loads(res.stdout)
    assert out["decision"] == "hold" and out["source"]["name"] == "prometheus"
    assert out["summary"].startswith("HOLD: no sample could be read: prometheus")
    assert "Connection refused" in out["summary"]


def test_a_bad_metrics_source_is_a_usage_error(stack: Stack) -> None:
    for env, word in (
            ({"PROOF_METRICS_SOURCE": "graphite"}, "PROOF_METRICS_SOURCE='graphite'"),
            ({"PROOF_METRICS_SOURCE": "prometheus", "PROOF_PROMETHEUS_URL": "prom:9090"}, "--prometheus-url")):
        res = subprocess.run([sys.executable, "-m", "consumer.proof", "observe", "--window", "1"], cwd=ROOT,
                             env={"PATH": "/usr/bin:/bin", "REDIS_URL": stack.server.url, **env},
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 64 and word in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_counters_survive_a_restart_and_points_follow_the_interval() -> None:
    # a service restarted mid-window: its counter begins again at 0; a series born in the window counts from 0
    assert cumulative([(0, 10), (1, 15), (2, 3), (3, 8)], born=False) == [(0, 0), (1, 5), (2, 8), (3, 13)]
    assert cumulative([(5, 4), (6, 9)], born=True) == [(5, 4), (6, 9)]
    # scrapes every 0.4 s, points every 1 s, the last scrape always kept
    assert thin([0.1, 0.5, 0.9, 1.3, 1.7, 2.1, 2.5], 0.0, 1.0) == [0.1, 1.3, 2.1, 2.5]
