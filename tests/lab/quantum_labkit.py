"""Helpers for the lab tests: a private lab host per test module, ansible-playbook against it, commands on it.

Each test module gets its own lab host (its own network namespace, veth and /30) and a private inventory whose
group_vars are the lab's own (inventory/lab/group_vars), so that the tests exercise exactly what `make deploy` uses
without ever touching the operator's lab host (qlab1) or another test's.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, TypeVar

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
LAB_KEY = Path("/var/lib/quantum-lab/ssh/id_ed25519")
LAB_HOSTS = Path("/var/lib/quantum-lab/hosts")
STATUS_SCRIPT = ANSIBLE / "roles" / "quantum_lab" / "files" / "lab_status.sh"
ENV_FILE = "/etc/quantum/ai-engine.env"
SECRETS = Path("/var/lib/quantum-lab/secrets")  # the lab's Redis passwords (inventory/lab/group_vars), control node only
# Each ACL user's credential file on a host (REDIS_URL with that user), written by the deploy (role quantum_redis).
REDIS_CREDENTIALS = {"proof": "/etc/quantum/redis-proof.env", "exec": "/etc/quantum/redis-execution.env",
                     "engine": "/etc/quantum/redis-ai-engine.env"}
UNITS = ("quantum-ai-engine", "quantum-execution")
SHIPPED = ("consumer", "schemas", "requirements.txt", "tests", "harness")  # tests/ imports harness (the schema gate)

T = TypeVar("T")


def wait_until(probe: Callable[[], T], timeout: float, interval: float = 0.5, what: str = "condition") -> T:
    """Poll until probe() returns something truthy; return it, or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = probe()
    return last


class _Lab(Protocol):
    def up(self) -> subprocess.CompletedProcess[str]: ...
    def down(self) -> subprocess.CompletedProcess[str]: ...
    def playbook(self, name: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]: ...


L = TypeVar("L", bound=_Lab)


def fresh(make: Callable[[], L], up: bool = True) -> Iterator[L]:
    """A test module's lab (``yield from`` it in a module fixture): whatever an earlier, interrupted run left is
    removed first, the lab is built when ``up``, and it is removed again after the module."""
    lab = make()
    lab.down()
    if up:
        lab.up()
    yield lab
    lab.down()


def timed(lab: _Lab, playbook: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """ansible-playbook against the lab, printing how long it took (pytest -s shows it; CI logs keep it)."""
    started = time.monotonic()
    res = lab.playbook(playbook, *args, timeout=timeout)
    print(f"{playbook} {' '.join(args)}: rc={res.returncode} in {time.monotonic() - started:.1f}s")
    return res


def recap(output: str, host: str) -> dict[str, int]:
    """The PLAY RECAP counters of one host (ok, changed, unreachable, failed, skipped, rescued, ignored)."""
    m = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", output, re.M)
    assert m, f"no PLAY RECAP line for {host} in:\n{output[-3000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


class LabHost:
    """One lab host of the tests: its inventory, playbooks against it, and commands on it over SSH."""

    def __init__(self, workdir: Path, name: str, ip: str, gateway: str):
        self.name, self.ip, self.gateway = name, ip, gateway
        self.workdir = workdir
        self.src = workdir / "src"
        self.inventory = workdir / "inventory"
        self.snapshot_tree()
        self.write_inventory()

    # -- set-up ------------------------------------------------------------------------------------------------

    def snapshot_tree(self) -> None:
        """Deploy a private copy of the tree, so that the tests can change code and edits elsewhere cannot."""
        if self.src.exists():
            shutil.rmtree(self.src)
        self.src.mkdir(parents=True)
        for p in SHIPPED:
            s = ROOT / p
            if s.is_dir():
                shutil.copytree(s, self.src / p, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
            else:
                shutil.copy2(s, self.src / p)

    def write_inventory(self) -> None:
        self.inventory.mkdir(parents=True, exist_ok=True)
        link = self.inventory / "group_vars"
        if not link.exists():
            link.symlink_to(ROOT / "inventory" / "lab" / "group_vars")
        one = {self.name: None}
        inv = {"all": {"children": {
            "quantum_lab": {"hosts": {self.name: {"ansible_host": self.ip, "quantum_lab_gateway_ip": self.gateway}}},
            "quantum": {
                "children": {"quantum_ai_engine": {"hosts": one}, "quantum_execution": {"hosts": one},
                             "quantum_redis": {"hosts": one}},
                "vars": {"quantum_release_src": str(self.src), "quantum_preflight_repo": str(self.src)},
            },
        }}}
        (self.inventory / "hosts.yml").write_text(json.dumps(inv, indent=1))  # JSON is YAML

    # -- control node ------------------------------------------------------------------------------------------

    def playbook(self, name: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
        return subprocess.run(["ansible-playbook", "-i", str(self.inventory), name, *args], cwd=ANSIBLE, env=env,
                              capture_output=True, text=True, timeout=timeout)

    def up(self) -> subprocess.CompletedProcess[str]:
        res = self.playbook("lab.yml")
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
        return res

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.playbook("lab_destroy.yml")

    def traces(self) -> dict:
        """Every trace of this lab host on the control node (lab_status.sh of the lab role)."""
        return lab_traces(self.name)

    # -- on the host -------------------------------------------------------------------------------------------

    def sh(self, command: str, check: bool = True, timeout: float = 60, stdin: str | bytes | None = None,
           login: bool = False) -> subprocess.CompletedProcess[Any]:
        """``command`` on the host as root. Text in and out, except that bytes on stdin (a `redis-cli --pipe` batch)
        make stdout and stderr bytes too.

        Commands share one SSH connection per host, kept 30 s after the last (a login of its own costs the host and
        the control node about 0.2 s of CPU, a shared one 0.02 s, and tests poll hosts every half second). A host
        that went away fails the next command within about 12 s (keepalives), as a refused login does; a test that
        counts the host's logins asks for a login of its own (login=True)."""
        where = LAB_HOSTS / self.name
        shared = (["-o", "ControlPath=none"] if login else
                  ["-o", "ControlMaster=auto", "-o", f"ControlPath={where}/ssh-%C", "-o", "ControlPersist=30",
                   "-o", "ServerAliveInterval=3", "-o", "ServerAliveCountMax=4"])
        res = subprocess.run(
            ["ssh", "-i", str(LAB_KEY), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
             "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={where / 'known_hosts'}",
             "-o", "ConnectTimeout=5", *shared, f"root@{self.ip}", command],
            capture_output=True, text=not isinstance(stdin, bytes), timeout=timeout, input=stdin)
        if check:
            assert res.returncode == 0, f"{command!r} on {self.name}: rc={res.returncode}\n{res.stdout}\n{res.stderr}"
        return res

    def out(self, command: str) -> str:
        return self.sh(command).stdout.strip()

    def logins(self) -> int:
        """SSH logins the host's sshd accepted so far, this command's own login included.

        journald may not have read sshd's line of this very login when the command runs (on a loaded machine one host
        counted one short). A marker sent to the same syslog socket after the login is awaited first: journald reads
        that socket in order, so once the marker is in the journal, so is every line sshd sent before it."""
        marker = f"login-count-{time.time_ns()}"
        seen = f"journalctl --no-pager -q -o cat -t quantum-test | grep -qx {marker}"
        return int(self.sh(f"logger -t quantum-test {marker}; n=0; until {seen}; do n=$((n + 1)); "
                           f"[ $n -le 300 ] || {{ echo 'marker not in the journal after 30 s' >&2; exit 3; }}; "
                           "sleep 0.1; done; journalctl --no-pager -q -o cat _COMM=sshd | grep -c 'Accepted publickey' "
                           "|| true", login=True).stdout)

    def current(self) -> str:
        """The live release id, read from the `current` link."""
        return os.path.basename(self.out("readlink /opt/quantum/current"))

    def releases(self) -> list[str]:
        return sorted(self.out("ls -1 /opt/quantum/releases").split())

    def unit(self, unit: str, *props: str) -> dict[str, str]:
        args = " ".join(f"-p {p}" for p in props)
        lines = self.out(f"systemctl show {args} {unit}").splitlines()
        return dict(line.split("=", 1) for line in lines)

    def fingerprint(self) -> dict[str, str]:
        """What a deploy may change on the host: settings, drop-ins, releases, link, and the units' invocations."""
        return {
            "env": self.sh(f"sha256sum {ENV_FILE} 2>/dev/null || echo absent", check=False).stdout.strip(),
            "dropins": self.sh("cat /etc/systemd/system/quantum-*.service.d/p0d5-env.conf 2>/dev/null | sha256sum",
                               check=False).stdout.strip(),
            "current": self.sh("readlink /opt/quantum/current || echo none", check=False).stdout.strip(),
            "releases": self.sh("ls -1 /opt/quantum/releases 2>/dev/null", check=False).stdout.strip(),
            "invocations": self.sh("systemctl show -p InvocationID --value " + " ".join(UNITS), check=False).stdout.strip(),
        }

    def config_line(self) -> str:
        inv = self.unit("quantum-execution", "InvocationID")["InvocationID"]
        return self.sh(f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={inv} --grep 'P0.D.5 Config:'",
                       check=False).stdout.strip()

    def redis_cli(self, args: str, user: str | None = "proof", check: bool = True,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """redis-cli on the host as one ACL user ("proof", "exec", "engine", "admin"; None: no login at all).

        Service users log in with the host's own credential file; the admin password (which only the control node
        knows) travels on stdin into REDISCLI_AUTH. No password is ever on a command line.
        """
        if user == "admin":
            password = (SECRETS / "redis-admin").read_text().strip()
            cmd = f"read -r REDISCLI_AUTH && export REDISCLI_AUTH && redis-cli --no-auth-warning --user quantum-admin {args}"
            return self.sh(cmd, check=check, timeout=timeout, stdin=password + "\n")
        if user is None:
            return self.sh(f"redis-cli {args}", check=check, timeout=timeout)
        return self.sh(f'set -a && . {REDIS_CREDENTIALS[user]} && set +a && redis-cli --no-auth-warning -u "$REDIS_URL" '
                       f"{args}", check=check, timeout=timeout)

    def redis(self, args: str, user: str | None = "proof") -> str:
        """The output of one redis-cli command as ``user`` (see redis_cli)."""
        return self.redis_cli(args, user).stdout.strip()

    def result_count(self) -> int:
        return int(self.redis("XLEN quantum:stream:execution.result"))

    def change_code(self, marker: str) -> None:
        """A code change the release checksum must notice."""
        with (self.src / "consumer" / "__init__.py").open("a") as fh:
            fh.write(f"\n# deploy test change: {marker}\n")


# -- a fleet: several lab hosts on one bridge ------------------------------------------------------------------------


def lab_traces(name: str, bridge: str = "") -> dict:
    """Every trace of one lab host on the control node (lab_status.sh of the lab role), and its bridge if any."""
    args = ["bash", str(STATUS_SCRIPT), name, name, f"vq-{name}"[:15], str(LAB_HOSTS / name)] + ([bridge] if bridge else [])
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def default_roles(names: list[str]) -> dict[str, list[str]]:
    """Groups by name: <x>-r… Redis, <x>-a… AI engine (else the Redis host), <x>-x… execution (else the Redis host)."""
    def kind(n: str) -> str:
        return n.rsplit("-", 1)[-1][:1]
    redis = [n for n in names if kind(n) == "r"] or names[:1]
    return {"quantum_redis": redis,
            "quantum_ai_engine": [n for n in names if kind(n) == "a"] or redis[:1],
            "quantum_execution": [n for n in names if kind(n) == "x"] or redis[:1]}


class FleetHost(LabHost):
    """One host of a Fleet: every LabHost method on it; its playbooks run on the fleet's inventory, limited to it."""

    def __init__(self, fleet: "Fleet", name: str, ip: str):  # noqa: D107 - the fleet owns inventory and tree
        self.fleet, self.name, self.ip, self.gateway = fleet, name, ip, fleet.gateway
        self.workdir, self.src, self.inventory = fleet.workdir, fleet.src, fleet.inventory

    def snapshot_tree(self) -> None:
        self.fleet.snapshot_tree()

    def write_inventory(self) -> None:
        self.fleet.write_inventory()

    def playbook(self, name: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return self.fleet.playbook(name, "--limit", self.name, *args, timeout=timeout)

    def traces(self) -> dict:
        return lab_traces(self.name, self.fleet.bridge)


class Fleet:
    """Several lab hosts on one private bridge and subnet, with one private inventory (groups as inventory/lab).

    `prefix_or_names` is a name prefix (hosts <prefix>-r, -a, -x1, -x2: Redis, AI engine, two execution hosts) or a
    list of names; addresses are .11, .12, … of `subnet` in that order, the control node is .1 on `bridge`.
    `roles` maps groups to names (default: by the name's last part, see default_roles); `host_vars` adds inventory
    variables per host; `quantum_vars` adds variables to the group quantum.
    """

    snapshot_tree = LabHost.snapshot_tree
    playbook = LabHost.playbook
    change_code = LabHost.change_code

    def __init__(self, workdir: Path, prefix_or_names: str | list[str], subnet: str, bridge: str,
                 roles: dict[str, list[str]] | None = None, host_vars: dict[str, dict] | None = None,
                 quantum_vars: dict | None = None):
        names = ([f"{prefix_or_names}-{s}" for s in ("r", "a", "x1", "x2")] if isinstance(prefix_or_names, str)
                 else list(prefix_or_names))
        net = ipaddress.ip_network(subnet)
        self.workdir, self.bridge, self.prefix = workdir, bridge, net.prefixlen
        self.gateway = str(net.network_address + 1)
        self.src, self.inventory = workdir / "src", workdir / "inventory"
        self.roles = roles or default_roles(names)
        self.host_vars = host_vars or {}
        self.quantum_vars = quantum_vars or {}
        self.hosts: dict[str, FleetHost] = {n: FleetHost(self, n, str(net.network_address + 11 + i))
                                            for i, n in enumerate(names)}
        self.snapshot_tree()
        self.write_inventory()

    def write_inventory(self) -> None:
        """hosts.yml for this fleet; group_vars is the lab's own (a link), so the tests use what `make deploy` uses."""
        self.inventory.mkdir(parents=True, exist_ok=True)
        link = self.inventory / "group_vars"
        if not link.exists():
            link.symlink_to(ROOT / "inventory" / "lab" / "group_vars")
        lab = {n: {"ansible_host": h.ip, **self.host_vars.get(n, {})} for n, h in self.hosts.items()}
        inv = {"all": {"children": {
            "quantum_lab": {"hosts": lab, "vars": {"quantum_lab_bridge": self.bridge, "quantum_lab_gateway_ip": self.gateway,
                                                    "quantum_lab_prefix": self.prefix}},
            "quantum": {
                "children": {g: {"hosts": {n: None for n in self.roles.get(g, [])}}
                             for g in ("quantum_ai_engine", "quantum_execution", "quantum_redis", "quantum_sentinel")
                             if g != "quantum_sentinel" or g in self.roles},
                "vars": {"quantum_release_src": str(self.src), "quantum_preflight_repo": str(self.src), **self.quantum_vars},
            },
        }}}
        (self.inventory / "hosts.yml").write_text(json.dumps(inv, indent=1))  # JSON is YAML

    def __getitem__(self, name: str) -> FleetHost:
        return self.hosts[name]

    def up(self, *args: str) -> subprocess.CompletedProcess[str]:
        res = self.playbook("lab.yml", *args)
        assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
        return res

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.playbook("lab_destroy.yml")

    def traces(self) -> dict[str, dict]:
        """Traces of every host (see lab_traces); each carries the bridge's state and ports."""
        return {n: lab_traces(n, self.bridge) for n in self.hosts}

    def bridge_exists(self) -> bool:
        return subprocess.run(["ip", "link", "show", "dev", self.bridge], capture_output=True).returncode == 0

    def kill_host(self, name: str, timeout: float = 30) -> None:
        """The whole host stops at once, like a power cut: SIGKILL of its systemd-nspawn and of everything in it.

        Its root filesystem, network namespace and veth stay, so boot_host() brings it back with its state.
        """
        pid = self.hosts[name].traces()["nspawn_pid"]
        assert pid, f"lab host {name} is not running"
        os.kill(pid, signal.SIGKILL)
        # The container's processes are not children that die with systemd-nspawn: kill them too.
        def gone() -> bool:
            t = lab_traces(name, self.bridge)
            for p in t["netns_pids"]:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return t["nspawn_pid"] is None and not t["netns_pids"]
        wait_until(gone, timeout, what=f"lab host {name} stopped")

    def boot_host(self, name: str) -> subprocess.CompletedProcess[str]:
        """Bring a stopped host back with its state (lab.yml on it alone boots its intact root filesystem)."""
        res = self.playbook("lab.yml", "--limit", name)
        assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
        return res

    def _eth0(self, name: str, state: str) -> None:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "eth0", state], check=True)

    def partition(self, name: str) -> None:
        """Cut the host off the network (eth0 down inside its namespace); it keeps running."""
        self._eth0(name, "down")

    def heal(self, name: str, timeout: float = 30) -> None:
        """End a partition: eth0 up again, and wait until the host answers SSH."""
        self._eth0(name, "up")
        host = self.hosts[name]
        wait_until(lambda: host.sh("true", check=False, timeout=10).returncode == 0, timeout, what=f"{name} reachable")
