"""LOG_FILE: the service's lines reach stderr (the journal) and the file alike; a file moved away by logrotate is
reopened by path without a restart; a file that cannot be opened stops the service with a config error (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, intent, wait_until, xadd


def test_stale_drops_reach_stderr_and_the_log_file_which_is_reopened_after_rotation(r, service_factory,
                                                                                   tmp_path: Path) -> None:
    log_file = tmp_path / "execution.log"
    svc = service_factory(LOG_FILE=str(log_file), STALE_LOG_INTERVAL_SEC="1")
    try:
        xadd(r, intent("old-1", age_sec=3600))
        wait_until(lambda: "STALE_INTENT_DROP intent_id=old-1" in log_file.read_text(), what="stale drop in the file")
        assert "STALE_INTENT_DROP intent_id=old-1" in svc.log()  # stderr too: the journal keeps the same lines
        first = log_file.read_text().splitlines()
        assert any("P0.D.5 Config:" in line for line in first)
        assert all(line[:4].isdigit() and line[10] == "T" for line in first), first  # UTC timestamp on each line

        rotated = tmp_path / "execution.log.1"
        log_file.rename(rotated)  # what logrotate does (no copytruncate); the service is not told
        log_file.touch(mode=0o640)  # logrotate's `create`
        wait_until(lambda: svc.proc is not None and svc.proc.poll() is None, what="service alive")
        sent = []

        def logged_in_new_file() -> bool:  # one stale intent per poll: the drop log speaks once per second
            sent.append(f"old-2-{len(sent)}")
            xadd(r, intent(sent[-1], age_sec=3600))
            return "STALE_INTENT_DROP intent_id=old-2-" in log_file.read_text()

        wait_until(logged_in_new_file, interval=0.2, what="stale drop in the new file after the rename")
        assert "old-2-" not in rotated.read_text()
    finally:
        assert svc.stop() == 0
    assert "service_stopped" in log_file.read_text()


@pytest.mark.parametrize("value, reason", [
    ("/nonexistent-dir/execution.log", "cannot be opened for appending (No such file or directory)"),
    ("relative/execution.log", "is not allowed (an absolute path)"),
])
def test_a_log_file_that_cannot_be_opened_is_a_config_error(value: str, reason: str) -> None:
    for module in ("consumer", "consumer.bridge"):
        args = [sys.executable, "-m", module] + (["--demo", "1", "--count", "1"] if module == "consumer.bridge" else [])
        # REDIS_URL points nowhere: the error must come before any Redis connection is tried.
        res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=30,
                             env={**os.environ, "LOG_FILE": value, "REDIS_URL": "redis://127.0.0.1:1/0"})
        assert res.returncode == 2, (module, res.stderr)
        assert res.stderr.strip().splitlines()[-1] == f"config error: LOG_FILE={value!r} {reason}", (module, res.stderr)
