"""Real parts for the tests: a redis-server on a free loopback port, the service as a real process, polling."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import redis

from consumer.config import Config

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# The service's default names, from the one place they are written.
INTENTS = Config.intent_stream
RESULTS = Config.result_stream
DLQ = Config.dlq_stream
GROUP = Config.group
STATS = Config.stats_key
IDEM_PREFIX = Config.idem_prefix
RATE_PREFIX = Config.rate_prefix


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A private redis-server; with ``persistent`` it keeps an append-only file across restarts."""

    def __init__(self, persistent: bool = False, aclfile: Path | None = None,
                 admin: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="quantum-redis-"))
        self.persistent = persistent
        self.aclfile = aclfile  # users.acl as the deploy writes it; then ``admin`` (user, password) is how we log in
        self.admin = admin
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
                "--protected-mode", "no", "--logfile", str(self.dir / "redis.log")]
        if self.aclfile is not None:
            args += ["--aclfile", str(self.aclfile)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        client.connection_pool.connection_kwargs["socket_connect_timeout"] = 0.2

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, 10, what="redis-server to answer PING")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        if self.admin is not None:
            return redis.Redis(port=self.port, username=self.admin[0], password=self.admin[1])
        return redis.Redis(port=self.port)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ServiceProcess:
    """``python -m consumer`` as a real process; start() returns once it has sent READY=1."""

    def __init__(self, redis_url: str, **env: Any) -> None:
        self.env = {**os.environ, "REDIS_URL": redis_url, "CLAIM_IDLE_MS": "60000", "RATE_LIMIT_MAX": "100000",
                    **{k: str(v) for k, v in env.items()}}
        self.log_path = Path(tempfile.mkstemp(prefix="quantum-exec-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None
        self._sock_dir = Path(tempfile.mkdtemp(prefix="quantum-notify-"))

    def start(self, ready: bool = True, timeout: float = 20) -> "ServiceProcess":
        sock_path = self._sock_dir / f"notify-{uuid.uuid4().hex[:8]}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        env = {**self.env, "NOTIFY_SOCKET": str(sock_path)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "consumer"], cwd=ROOT, env=env, stdout=log,
                                         stderr=log)
        try:
            if ready:
                sock.settimeout(0.1)
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        if "READY=1" in sock.recv(4096).decode():
                            break
                    except TimeoutError:
                        if self.proc.poll() is not None:
                            raise AssertionError(f"service exited {self.proc.returncode}: {self.log()}") from None
                        if time.monotonic() > deadline:
                            raise AssertionError(f"service not ready after {timeout}s: {self.log()}") from None
        finally:
            sock.close()
            sock_path.unlink(missing_ok=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.proc = None
        return rc

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def intent(n: int | str = 0, age_sec: float = 0.0, **overrides: Any) -> dict[str, Any]:
    """A valid LIMIT intent; ``overrides`` replace fields (None removes one)."""
    doc: dict[str, Any] = {
        "intent_id": f"test-{n:08d}" if isinstance(n, int) else n,
        "symbol": "BTCUSDT", "side": "BUY", "order_type": "LIMIT", "qty": 0.5, "price": 64000.5,
        "timestamp": iso(time.time() - age_sec), "source": "tests", "confidence": 0.9,
    }
    for key, value in overrides.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def xadd(r: redis.Redis, doc: Any, stream: str = INTENTS, **fields: Any) -> bytes:
    payload = doc if isinstance(doc, (bytes, str)) else json.dumps(doc)
    return r.xadd(stream, {"payload": payload, **fields})


def results(r: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(f[b"payload"]) for _, f in r.xrange(RESULTS)]


def dead_letters(r: redis.Redis) -> list[dict[bytes, bytes]]:
    return [f for _, f in r.xrange(DLQ)]


def stats(r: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(STATS).items()}


def pending(r: redis.Redis) -> int:
    try:
        return int(r.xpending(INTENTS, GROUP)["pending"])
    except redis.ResponseError:
        return 0


def drained(r: redis.Redis, total: int) -> bool:
    """Every one of ``total`` entries has an outcome and nothing is pending."""
    return stats(r).get("consumed", 0) >= total and pending(r) == 0
