"""The proof CLI's exit codes, in one place: the ramp, the deploy checks and operators' scripts branch on them."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """0 healthy, 1 unhealthy, 2 Redis unreachable, 3 hold (observe: a metric was unreadable), 64 usage error.

    2 is reserved for an unreachable Redis (argparse's own usage exit is remapped to 64), so a script can tell "the
    pipeline is broken" from "I could not look".
    """

    OK = 0
    UNHEALTHY = 1
    UNREACHABLE = 2
    HOLD = 3
    USAGE = 64
