"""The units' state from systemd and the service's stale-drop lines from the journal, where systemd runs.

systemd counts as present only when systemctl exists and PID 1 is systemd (sd_booted's test: /run/systemd/system is a
directory). A container that merely has the systemctl binary answers every query with an error, and a report that
called every unit "failed" there would be a lie; it says "systemd: not present" instead.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

UNIT_PROPERTIES = (
    "LoadState", "ActiveState", "SubState", "MainPID", "NRestarts", "ActiveEnterTimestamp", "ExecMainStatus",
    "ControlGroup", "CPUUsageNSec", "MemoryCurrent",
)
STALE_MARK = "STALE_INTENT_DROP"
_SUPPRESSED = re.compile(r"(?:suppressed\w*[=: ]+(\d+))|(?:(\d+)\s+(?:more\s+)?(?:were\s+)?suppressed)", re.IGNORECASE)


def systemd_present() -> bool:
    """True when systemctl can answer for this machine's init (PID 1 is systemd)."""
    if shutil.which("systemctl") is None:
        return False
    if Path("/run/systemd/system").is_dir():
        return True
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show` output (KEY=value lines) as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def unit_state(unit: str, timeout: float = 5.0) -> dict[str, Any]:
    """ActiveState, SubState, MainPID and friends of one unit; `error` set when systemctl could not answer."""
    try:
        proc = subprocess.run(
            ["systemctl", "show", "-p", ",".join(UNIT_PROPERTIES), unit],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"unit": unit, "error": str(exc)}
    if proc.returncode != 0:
        return {"unit": unit, "error": (proc.stderr or proc.stdout).strip()[:200] or f"exit {proc.returncode}"}
    props = parse_show(proc.stdout)
    main_pid = props.get("MainPID", "0")
    return {
        "unit": unit,
        "load_state": props.get("LoadState"),
        "active_state": props.get("ActiveState"),
        "sub_state": props.get("SubState"),
        "main_pid": int(main_pid) if main_pid.isdigit() else 0,
        "n_restarts": int(props["NRestarts"]) if props.get("NRestarts", "").isdigit() else None,
        "active_since": props.get("ActiveEnterTimestamp") or None,
        "control_group": props.get("ControlGroup") or None,
        "cpu_usage_nsec": int(props["CPUUsageNSec"]) if props.get("CPUUsageNSec", "").isdigit() else None,
    }


def units_state(units: Iterable[str], enabled: bool = True) -> dict[str, Any]:
    """Both units' state, or `present: false` where systemd is not the init system (or --no-systemd)."""
    if not enabled or not systemd_present():
        return {"present": False, "units": {}}
    return {"present": True, "units": {u: unit_state(u) for u in units}}


def count_stale_lines(lines: Iterable[str]) -> dict[str, int]:
    """STALE_INTENT_DROP lines, and the suppressed drops the rate-limited log reports beside them."""
    lines_n = suppressed = 0
    for line in lines:
        if STALE_MARK in line:
            lines_n += 1
        m = _SUPPRESSED.search(line) if "suppress" in line.lower() else None
        if m:
            suppressed += int(m.group(1) or m.group(2))
    return {"lines": lines_n, "suppressed": suppressed, "drops_logged": lines_n + suppressed}


def journal_stale_drops(unit: str, since: str, timeout: float = 30.0) -> dict[str, Any]:
    """Count stale-drop lines of `unit` in the journal since `since` (e.g. -1h); `present: false` without journald."""
    if shutil.which("journalctl") is None or not systemd_present():
        return {"present": False, "unit": unit, "since": since}
    try:
        proc = subprocess.run(
            ["journalctl", "-u", unit, "--since", since, "--no-pager", "-o", "cat"],
            capture_output=True, text=True, timeout=timeout, check=False, errors="replace",
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"present": True, "unit": unit, "since": since, "error": str(exc)}
    if proc.returncode != 0:
        return {"present": True, "unit": unit, "since": since, "error": proc.stderr.strip()[:200]}
    return {"present": True, "unit": unit, "since": since, **count_stale_lines(proc.stdout.splitlines())}
