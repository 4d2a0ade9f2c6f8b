"""A private redis-server on a free loopback port, and ``python -m consumer`` as a child process."""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import redis

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


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


def end_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
    """Signal a child and reap it; one still running after ``timeout`` is killed, never left behind.

    Returns its exit status, or None when it had to be killed.
    """
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


_LOG_DIR: Path | None = None


def _default_log_dir() -> Path:
    """Where services log when the caller names no directory: one per harness process, removed when it exits (a test
    session starts a few hundred services, and their logs were left in the temp dir)."""
    global _LOG_DIR
    if _LOG_DIR is None:
        _LOG_DIR = Path(tempfile.mkdtemp(prefix="quantum-logs-"))
        atexit.register(shutil.rmtree, _LOG_DIR, True)
    return _LOG_DIR


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the harness dies, even by SIGKILL (a test's timeout), so that no
    redis-server is left running on its own."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


class RedisServer:
    """A private redis-server; with ``persistent`` it keeps an append-only file across restarts.

    Its directory is created under ``data_root`` (default: the system's temp dir; the benchmark passes a disk
    filesystem so that an fsync costs what it costs) and removed by ``cleanup``.
    """

    def __init__(self, persistent: bool = False, aclfile: Path | None = None,
                 admin: tuple[str, str] | None = None, data_root: Path | None = None, bind: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.bind = bind  # another address, e.g. a lab bridge's, lets lab hosts reach it
        self.dir = Path(tempfile.mkdtemp(prefix="quantum-redis-", dir=data_root))
        self.persistent = persistent
        self.aclfile = aclfile  # users.acl as the deploy writes it; then ``admin`` (user, password) is how we log in
        self.admin = admin
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.bind}:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", self.bind, "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
                # no automatic AOF rewrite: a fork + rewrite in the middle of a timed run would measure the rewrite
                "--auto-aof-rewrite-percentage", "0",
                "--protected-mode", "no", "--logfile", str(self.dir / "redis.log")]
        if self.aclfile is not None:
            args += ["--aclfile", str(self.aclfile)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent)
        client = self.client()
        client.connection_pool.connection_kwargs["socket_connect_timeout"] = 0.2

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, 10, what="redis-server to answer PING")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        if self.admin is not None:
            return redis.Redis(host=self.bind, port=self.port, username=self.admin[0], password=self.admin[1])
        return redis.Redis(host=self.bind, port=self.port)

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def cleanup(self) -> None:
        """Stop the server and remove its directory (the AOF with it)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def set_persistence(self, policy: str, timeout: float = 300) -> None:
        """``no``: appendonly no. ``everysec`` / ``always``: appendonly yes with that appendfsync, returning once the
        initial rewrite of the data set into the AOF is done, so that no timed run shares the disk with it."""
        r = self.client()
        if policy == "no":
            r.config_set("appendonly", "no")
            return
        r.config_set("appendfsync", policy)
        r.config_set("appendonly", "yes")

        def rewritten() -> bool:
            info = r.info("persistence")
            return bool(info["aof_enabled"] and not info["aof_rewrite_in_progress"]
                        and not info["aof_rewrite_scheduled"]
                        and info.get("aof_last_bgrewrite_status", "ok") == "ok")

        wait_until(rewritten, timeout, what=f"the AOF rewrite after appendonly yes ({policy})")

    def aof_size(self) -> int:
        """Bytes in the AOF (0 when it is off): its growth over a run is what that run made Redis write."""
        return int(self.client().info("persistence").get("aof_current_size", 0))


class ServiceProcess:
    """``python -m consumer`` as a real process; ``start`` returns once it has sent READY=1 on a datagram socket
    this harness owns (``ready_at`` is when, on the perf_counter clock, so start-up can be left out of a timing)."""

    def __init__(self, redis_url: str, log_dir: Path | None = None, name: str = "exec", **env: Any) -> None:
        self.env = {**os.environ, "REDIS_URL": redis_url, **{k: str(v) for k, v in env.items()}}
        fd, path = tempfile.mkstemp(prefix=f"quantum-{name}-", suffix=".log", dir=log_dir or _default_log_dir())
        os.close(fd)
        self.log_path = Path(path)
        self.proc: subprocess.Popen | None = None
        self.started = self.ready_at = 0.0

    def start(self, ready: bool = True, timeout: float = 20) -> "ServiceProcess":
        sock_dir = Path(tempfile.mkdtemp(prefix="quantum-notify-"))
        sock_path = sock_dir / "notify"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        env = {**self.env, "NOTIFY_SOCKET": str(sock_path)}
        try:
            with open(self.log_path, "ab") as log:
                self.started = time.perf_counter()
                self.proc = subprocess.Popen([sys.executable, "-m", "consumer"], cwd=ROOT, env=env, stdout=log,
                                             stderr=log)
            if ready:
                self._wait_ready(sock, timeout)
        finally:
            sock.close()
            shutil.rmtree(sock_dir, ignore_errors=True)
        return self

    def _wait_ready(self, sock: socket.socket, timeout: float) -> None:
        assert self.proc is not None
        sock.settimeout(0.1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if b"READY=1" in sock.recv(4096).split(b"\n"):
                    self.ready_at = time.perf_counter()
                    return
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"service exited {self.proc.returncode}: {self.log()}") from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"service not ready after {timeout}s: {self.log()}") from None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal and wait; a process still running after ``timeout`` is killed (never left behind) and reported."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        rc = end_process(proc, sig, timeout)
        if rc is None:
            raise AssertionError(f"service did not stop within {timeout}s of signal {sig}; killed. "
                                 f"Log: {self.log()[-2000:]}")
        return rc

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
