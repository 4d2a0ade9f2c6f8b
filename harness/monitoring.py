"""Debian's Prometheus and redis_exporter as child processes, for the tests that query real ones (the monitoring
role's rendered files, the ramp's Prometheus source): started on free loopback ports, stopped by their own handles."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .processes import _die_with_parent, end_process, free_port, wait_until

PROMETHEUS = shutil.which("prometheus")
EXPORTER = shutil.which("prometheus-redis-exporter")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read().decode())


class Procs:
    """Processes a test started; stopped (by their own handles, newest first) at the end."""

    def __init__(self) -> None:
        self.items: list[subprocess.Popen] = []

    def start(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.items.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.items):
            end_process(proc, timeout=20)


class Prometheus:
    """`prometheus` with a given configuration on a free port and a private TSDB; `query` answers the HTTP API."""

    def __init__(self, procs: Procs, workdir: Path, config: str) -> None:
        assert PROMETHEUS, "prometheus is not installed (scripts/bootstrap.sh installs it)"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        (workdir / "prometheus.yml").write_text(config)
        procs.start([PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.tsdb.path={workdir / 'tsdb'}"],
                    {"PATH": "/usr/bin:/bin"}, self.log)

    def api(self, path: str, **params: str) -> Any:
        body = get_json(f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else ""))
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def wait_targets_up(self, count: int, timeout: float = 60) -> list[dict]:
        def up() -> list[dict] | None:
            try:
                active = self.api("targets")["activeTargets"]
            except OSError:
                return None
            return active if len(active) == count and all(t["health"] == "up" for t in active) else None

        return wait_until(up, timeout, 0.5, f"{count} Prometheus targets up: {self.log.read_text()[-1500:]}")


def start_exporter(procs: Procs, workdir: Path, redis_addr: str, streams: list[str],
                   env: dict[str, str] | None = None) -> str:
    """redis_exporter with stream checks on `streams`, as the monitoring role runs it; its address host:port."""
    assert EXPORTER, "prometheus-redis-exporter is not installed (scripts/bootstrap.sh installs it)"
    address = f"127.0.0.1:{free_port()}"
    procs.start([EXPORTER, f"-web.listen-address={address}", f"-check-streams={','.join(streams)}",
                 "-set-client-name=false", "-redis-only-metrics"],
                {"PATH": "/usr/bin:/bin", "REDIS_ADDR": redis_addr, **(env or {})}, workdir / "exporter.log")
    return address
