"""A real Sentinel set-up on free loopback ports: a master, a replica and three sentinels, each its own process.

The same binary as production (``redis-server`` and ``redis-server --sentinel``), with short detection times so a
failover takes seconds. The venue of the failover tests lives in a Redis of its own (``PAPER_VENUE_URL``): a
paper venue inside the Redis that fails over would lose its own memory of an order together with the claim, and
then could not tell a second order from a first one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from support import REDIS_SERVER, free_port, wait_until

MASTER_NAME = "qtest"


class Node:
    """One redis-server (data node or sentinel) with its own directory, restartable on the same port."""

    def __init__(self, kind: str, root: Path, port: int | None = None,
                 auth: tuple[str, str] | None = None) -> None:
        self.kind = kind
        self.auth = auth  # (user, password) when the node has ACL users
        self.port = port or free_port()
        self.dir = root / f"{kind}-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self, args: list[str]) -> "Node":
        self.proc = subprocess.Popen([REDIS_SERVER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=self.dir)
        probe = self.client()
        probe.connection_pool.connection_kwargs["socket_connect_timeout"] = 0.2

        def up() -> bool:
            try:
                return bool(probe.ping())
            except redis.RedisError:
                return False

        wait_until(up, 15, what=f"{self.kind} on port {self.port} to answer PING")
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        if self.auth is not None:
            kwargs = {"username": self.auth[0], "password": self.auth[1], **kwargs}
        return redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=5, **kwargs)

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class SentinelCluster:
    """Master + replica + three sentinels watching ``MASTER_NAME``; ``failover_after_kill`` measures the switch.

    ``min_replicas`` is the master's (and the replica's, for when it is promoted) min-replicas-to-write, as the
    deploy sets it.
    """

    def __init__(self, down_after_ms: int = 1000, min_replicas: int = 1, min_replicas_max_lag: int = 10,
                 roles: "RoleFiles | None" = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="quantum-sentinel-"))
        self.down_after_ms = down_after_ms
        self.min_replicas = min_replicas
        self.min_replicas_max_lag = min_replicas_max_lag
        self.roles = roles  # the files the Ansible roles write (ACL users, replication settings, sentinel.conf)
        data_auth = roles.admin if roles else None
        sentinel_auth = roles.sentinel_client if roles else None
        self.data = [Node("data", self.root, auth=data_auth), Node("data", self.root, auth=data_auth)]
        self.sentinels = [Node("sentinel", self.root, auth=sentinel_auth) for _ in range(3)]

    # -- life cycle ------------------------------------------------------------------------------------------

    def _data_args(self, node: Node, replica_of: Node | None) -> list[str]:
        args = ["--port", str(node.port), "--bind", "127.0.0.1", "--dir", str(node.dir), "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no",
                "--logfile", str(node.dir / "redis.log"), "--min-replicas-to-write", str(self.min_replicas),
                "--min-replicas-max-lag", str(self.min_replicas_max_lag), "--repl-diskless-sync", "yes",
                "--repl-diskless-sync-delay", "0"]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of.port)]
        if self.roles is not None:  # the role's files first, then the test's ports and paths
            conf = node.dir / "node.conf"
            conf.write_text(f"aclfile {self.roles.aclfile}\ninclude {self.roles.replication_conf}\n")
            args = [str(conf), *args]
        return args

    def start(self) -> "SentinelCluster":
        master, replica = self.data
        master.start(self._data_args(master, None))
        replica.start(self._data_args(replica, master))
        wait_until(lambda: self._link_up(replica), 20, what="the replica to sync")
        for s in self.sentinels:
            conf = s.dir / "sentinel.conf"
            local = (f"port {s.port}\nbind 127.0.0.1\nprotected-mode no\ndir {s.dir}\n"
                     f"logfile {s.dir / 'sentinel.log'}\npidfile {s.dir / 'sentinel.pid'}\nsupervised no\n")
            if self.roles is not None:
                conf.write_text(self.roles.sentinel_conf(s.port, master.port) + local)
            else:
                conf.write_text(
                    local + f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2\n"
                    f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                    f"sentinel parallel-syncs {MASTER_NAME} 1\n")
            s.start([str(conf), "--sentinel"])
        wait_until(lambda: all(self._sentinel_sees_all(s) for s in self.sentinels), 30,
                   what="every sentinel to know the replica and the other sentinels")
        return self

    def cleanup(self) -> None:
        for node in [*self.sentinels, *self.data]:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- views -----------------------------------------------------------------------------------------------

    @staticmethod
    def _link_up(replica: Node) -> bool:
        try:
            return replica.client().info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False

    def _sentinel_sees_all(self, s: Node) -> bool:
        try:
            m = s.client(decode_responses=True).sentinel_master(MASTER_NAME)
        except redis.RedisError:
            return False
        return int(m.get("num-slaves", 0)) >= 1 and int(m.get("num-other-sentinels", 0)) >= 2

    @property
    def sentinel_env(self) -> dict[str, str]:
        """The environment that points a service, the bridge or the proof at this set-up."""
        env = {"REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
               "REDIS_SENTINEL_MASTER": MASTER_NAME}
        if self.roles is not None:
            env.update(REDIS_SENTINEL_USERNAME=self.roles.sentinel_client[0],
                       REDIS_SENTINEL_PASSWORD=self.roles.sentinel_client[1])
        return env

    def master_port(self) -> int:
        """The master the sentinels agree on right now (asked of the first one that answers)."""
        for s in self.sentinels:
            try:
                host, port = s.client().sentinel_get_master_addr_by_name(MASTER_NAME)
                return int(port)
            except (redis.RedisError, TypeError):
                continue
        raise AssertionError("no sentinel answered")

    def node(self, port: int) -> Node:
        return next(n for n in self.data if n.port == port)

    def master(self) -> Node:
        return self.node(self.master_port())

    def replica(self) -> Node:
        port = self.master_port()
        return next(n for n in self.data if n.port != port)

    # -- faults ----------------------------------------------------------------------------------------------

    def kill_master(self) -> tuple[Node, float]:
        """SIGKILL the master, wait for the sentinels to promote the replica; returns (old master, seconds)."""
        old = self.master()
        started = time.monotonic()
        old.kill9()
        new = wait_until(lambda: self.master_port() != old.port and self.master_port(), 60,
                         what="the sentinels to promote the replica")
        wait_until(lambda: self.node(new).client().info("replication").get("role") == "master", 30,
                   what="the promoted replica to act as master")
        return old, time.monotonic() - started

    def restart_as_before(self, node: Node) -> None:
        """Start a killed data node again with its own files; the sentinels turn it into a replica."""
        node.start(self._data_args(node, None))

    def wait_rejoined(self, node: Node, timeout: float = 120) -> None:
        """Until the sentinels have turned ``node`` into a replica and it is in sync (about 10 s: their INFO round)."""
        try:
            wait_until(lambda: self._link_up(node), timeout, what=f"port {node.port} to rejoin as a replica")
        except AssertionError as exc:
            logs = "\n".join(f"--- {s.dir.name}\n" + "\n".join((s.dir / "sentinel.log").read_text(errors="replace")
                                                                 .splitlines()[-15:]) for s in self.sentinels)
            raise AssertionError(f"{exc}\n{node.client().info('replication')}\n{logs}") from None

    def wait_replicated(self, timeout: float = 120) -> Node:
        """Until the node the sentinels name as master has every other data node as a replica in sync; returns it.

        On a loaded machine the sentinels may fail over a second time (a busy master misses down-after-milliseconds),
        so which node ends up master is not fixed; that every node serves again, one master and its replicas, is.
        """
        def settled() -> Node | bool:
            try:
                master = self.master()
            except (redis.RedisError, StopIteration, AssertionError):  # no sentinel answered yet
                return False
            return all(self._link_up(n) for n in self.data if n is not master) and master

        return wait_until(settled, timeout, what="one master with every other data node replicating from it")

    def write_when_accepted(self, client: redis.Redis, what: str, write: Any, timeout: float = 60) -> Any:
        """Retry ``write()`` while the master refuses writes (NOREPLICAS until its replica acknowledges again)."""
        def attempt() -> Any:
            try:
                return write() or True
            except (redis.ConnectionError, redis.ResponseError) as exc:
                if isinstance(exc, redis.ResponseError) and "NOREPLICAS" not in str(exc):
                    raise
                return False

        return wait_until(attempt, timeout, interval=0.1, what=what)


class RoleFiles:
    """users.acl (role quantum_redis, with the extra users of quantum_sentinel), the replication settings and
    sentinel.conf, rendered from the roles' own templates and defaults with fresh passwords."""

    def __init__(self, root: Path, master_name: str = MASTER_NAME, down_after_ms: int = 1000) -> None:
        import hashlib

        import jinja2
        import yaml

        from support import ROOT

        roles = ROOT / "ansible" / "roles"
        self.passwords = {k: os.urandom(12).hex() for k in
                          ("admin", "exec", "engine", "proof", "replication", "monitor", "peer", "client")}
        redis_defaults = yaml.safe_load((roles / "quantum_redis" / "defaults" / "main.yml").read_text())
        sentinel_defaults = yaml.safe_load((roles / "quantum_sentinel" / "defaults" / "main.yml").read_text())
        values: dict[str, Any] = {k: v for k, v in {**redis_defaults, **sentinel_defaults}.items()
                                  if isinstance(v, (str, int, list)) and "{{" not in str(v)}
        for k in ("admin", "exec", "engine", "proof"):
            values[f"quantum_redis_password_{k}"] = self.passwords[k]
        for k in ("replication", "monitor", "peer", "client"):
            values[f"quantum_sentinel_password_{k}"] = self.passwords[k]
        values["quantum_redis_acl_extra_users"] = [
            {"name": values["quantum_sentinel_user_replication"], "password": self.passwords["replication"],
             "rules": values["quantum_sentinel_acl_replication"]},
            {"name": values["quantum_sentinel_user_monitor"], "password": self.passwords["monitor"],
             "rules": values["quantum_sentinel_acl_monitor"]},
        ]
        values.update(quantum_sentinel_master_name=master_name, quantum_sentinel_address="127.0.0.1",
                      quantum_sentinel_down_after_ms=down_after_ms, quantum_sentinel_failover_timeout_ms=10000)
        self.values = values
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True)
        env.filters["hash"] = lambda value, algo: hashlib.new(algo, value.encode()).hexdigest()
        self._env = env
        self._roles = roles
        self.aclfile = root / "users.acl"
        self.aclfile.write_text(self._render("quantum_redis", "users.acl.j2"))
        self.replication_conf = root / "quantum-replication.conf"
        self.replication_conf.write_text(self._render("quantum_sentinel", "replication.conf.j2"))
        self.admin = (values["quantum_redis_user_admin"], self.passwords["admin"])
        self.exec_user = (values["quantum_redis_user_exec"], self.passwords["exec"])
        self.engine_user = (values["quantum_redis_user_engine"], self.passwords["engine"])
        self.sentinel_client = (values["quantum_sentinel_user_client"], self.passwords["client"])

    def _render(self, role: str, template: str, **extra: Any) -> str:
        text = (self._roles / role / "templates" / template).read_text()
        return self._env.from_string(text).render(**{**self.values, **extra})

    def sentinel_conf(self, port: int, master_port: int) -> str:
        return self._render("quantum_sentinel", "sentinel.conf.j2", quantum_sentinel_port=port,
                            quantum_redis_port=master_port, quantum_sentinel_conf="sentinel.conf",
                            quantum_sentinel_master_address="127.0.0.1")
