"""Prometheus metrics of the execution service, served when ``METRICS_PORT`` is set (0, the default, is off).

Names carry this project's prefix; labels follow redis_exporter's conventions (``stream``, ``group``, ``consumer``)
so dashboards can join them with the Redis side. Counters are advanced once per committed batch, after the commit
succeeded, so they never count an outcome that was not written.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client import Counter as PromCounter

OUTCOMES = ("executed", "stale", "invalid", "duplicate", "failed", "dead_lettered", "reclaimed", "reconciled")


class Metrics:
    """No-op unless started; the service calls it the same way either way."""

    def __init__(self, stream: str, group: str, consumer: str) -> None:
        self.enabled = False
        self._labels = {"stream": stream, "group": group, "consumer": consumer}
        self.registry = CollectorRegistry()
        names = list(self._labels)
        self._intents = PromCounter("quantum_execution_intents", "Intents by outcome (acked with it)",
                                    names + ["outcome"], registry=self.registry)
        self._latency = Histogram("quantum_execution_latency_seconds", "Executor call duration", names,
                                  buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                  registry=self.registry)
        self._in_flight = Gauge("quantum_execution_in_flight", "Intents held unacknowledged by this consumer", names,
                                registry=self.registry)
        # process_cpu_seconds_total, process_resident_memory_bytes, ...: the ramp's CPU gate and the dashboard read
        # the service's own CPU from Prometheus as the proof reads it from /proc.
        ProcessCollector(registry=self.registry)

    def start(self, port: int, addr: str = "0.0.0.0") -> None:
        # Every series exists from the first scrape, at 0: rate() and increase() need a sample before the first
        # failure or dead letter to count it, or an alert on them misses the start of an incident.
        for outcome in OUTCOMES:
            self._intents.labels(**self._labels, outcome=outcome)
        self._latency.labels(**self._labels)
        self._in_flight.labels(**self._labels).set(0)
        start_http_server(port, addr=addr, registry=self.registry)
        self.enabled = True

    def committed(self, counters: Counter, latencies: Iterable[float], in_flight: int) -> None:
        if not self.enabled:
            return
        for outcome in OUTCOMES:
            if counters.get(outcome):
                self._intents.labels(**self._labels, outcome=outcome).inc(counters[outcome])
        hist = self._latency.labels(**self._labels)
        for seconds in latencies:
            hist.observe(seconds)
        self._in_flight.labels(**self._labels).set(in_flight)
