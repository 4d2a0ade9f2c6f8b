"""Logging set-up: one line per event, ``event key=value`` fields, to stderr (journald adds time and unit)."""

from __future__ import annotations

import logging
import sys


def setup(diag: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if diag else logging.INFO)
    for noisy in ("redis", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
