"""Logging set-up: one line per event, ``event key=value`` fields, to stderr (journald adds time and unit) and, with
``LOG_FILE``, to that file as well, with a UTC timestamp of its own (the runbook's ``tail -f … | grep``).

The file handler is a ``WatchedFileHandler``: before each line it checks that the path still names the file it has
open and reopens it when logrotate has moved it away. So logrotate renames and creates (no ``copytruncate``, which
loses the lines written between its copy and its truncate) and needs no signal or restart of the service.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time


class LogFileError(Exception):
    """LOG_FILE names a file the service cannot open for appending."""


def setup(diag: bool = False, log_file: str = "") -> None:
    """Route the root logger to stderr and, when ``log_file`` is set, to that file; raise LogFileError if it cannot
    be opened, so the service stops with a config error instead of running without the file the runbook reads."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handlers: list[logging.Handler] = [handler]
    if log_file:
        try:
            to_file = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise LogFileError(f"LOG_FILE={log_file!r} cannot be opened for appending ({exc.strerror})") from exc
        stamped = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        stamped.converter = time.gmtime
        to_file.setFormatter(stamped)
        handlers.append(to_file)
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = handlers
    root.setLevel(logging.DEBUG if diag else logging.INFO)
    for noisy in ("redis", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
