"""CPU used by a unit, measured over a window, with whatever source this host actually has.

The ramp's CPU gate cannot trust one source: systemd's CPUUsageNSec reads "[not set]" when CPU accounting is off (as
in the lab containers), cgroup v2's cpu.stat may not be mounted inside a container, and /proc only sees live
processes. So each reading says where it came from, tried in that order: systemd, the unit's cgroup cpu.stat, then
/proc/<pid>/stat of the unit's processes (cgroup.procs, or the MainPID alone).

Percent is of one core (100 % = one core busy for the whole window): the service is one Python process, so that is
the number that says it is saturated, whatever the machine's core count.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

CGROUP_ROOT = Path("/sys/fs/cgroup")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_ns(pid: int) -> int | None:
    """utime+stime of one process in ns (children that exited are not included), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    except (IndexError, ValueError):
        return None
    return ticks * 1_000_000_000 // _TICKS


# Where a unit's cgroup directory may be: unified (v2), or the hybrid layout's v2 and name=systemd trees.
CGROUP_TREES = ("", "unified", "systemd")


def _cgroup_file(control_group: str, name: str, trees: tuple[str, ...] = CGROUP_TREES) -> str | None:
    for tree in trees:
        try:
            return (CGROUP_ROOT / tree / control_group.lstrip("/") / name).read_text()
        except OSError:
            continue
    return None


def cgroup_pids(control_group: str | None) -> list[int]:
    """Processes of a unit's cgroup, empty when the cgroup is not visible here."""
    text = _cgroup_file(control_group, "cgroup.procs") if control_group else None
    return [int(p) for p in (text or "").split() if p.isdigit()]


def cgroup_cpu_ns(control_group: str | None) -> int | None:
    """usage_usec of the unit's cgroup v2 cpu.stat in ns (counts exited children too)."""
    text = _cgroup_file(control_group, "cpu.stat", ("", "unified")) if control_group else None
    if text is None:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec" and value.strip().isdigit():
            return int(value) * 1000
    return None


def unit_cpu_reader(unit: dict[str, Any], show: Callable[[], dict[str, Any]] | None = None
                    ) -> tuple[str, Callable[[], int | None]] | None:
    """Pick the best CPU source for a unit state (from systemd.unit_state); None when none is readable.

    `show` re-reads the unit state (for systemd's own counter); without it, systemd's counter is not used.
    """
    if show is not None and unit.get("cpu_usage_nsec") is not None:
        return "systemd", lambda: show().get("cpu_usage_nsec")
    cg = unit.get("control_group")
    if cgroup_cpu_ns(cg) is not None:
        return "cgroup", lambda: cgroup_cpu_ns(cg)
    pids = cgroup_pids(cg)
    if pids:
        return "proc", lambda: _sum_pids(cgroup_pids(cg) or pids)
    pid = unit.get("main_pid") or 0
    if pid > 0 and proc_cpu_ns(pid) is not None:
        return "proc", lambda: proc_cpu_ns(pid)
    return None


def _sum_pids(pids: list[int]) -> int | None:
    values = [v for v in (proc_cpu_ns(p) for p in pids) if v is not None]
    return sum(values) if values else None


class CpuMeter:
    """Two readings of one source, turned into percent of one core over the wall-clock window between them."""

    def __init__(self, source: str, read: Callable[[], int | None]):
        self.source = source
        self._read = read
        self._t0 = time.monotonic()
        self._v0 = read()

    def result(self) -> dict[str, Any]:
        """Percent of one core since construction; `percent: null` with a reason when a reading failed."""
        v1, t1 = self._read(), time.monotonic()
        window = t1 - self._t0
        if self._v0 is None or v1 is None or window <= 0:
            return {"source": self.source, "percent": None, "window_sec": round(window, 3),
                    "error": "cpu source unreadable"}
        pct = max(0.0, (v1 - self._v0) / 1e9 / window * 100)
        return {"source": self.source, "percent": round(pct, 1), "window_sec": round(window, 3)}


def meter_for_pid(pid: int) -> CpuMeter:
    """A meter for one process (used by tests and by --cpu-pid on hosts without systemd)."""
    return CpuMeter("proc", lambda: proc_cpu_ns(pid))
