"""The proof / ops CLI (``python -m consumer.proof``): is the pipeline healthy, and how fast is the backlog draining?

One module per concern: ``cli`` (commands), ``exitcode`` (the exit codes), ``config`` (settings), ``sections`` (the
report's typed sections), ``metrics`` (backlog, rates, error rate: each written once), ``collect`` (Redis reads),
``systemd`` (unit state, journal), ``cpu`` (unit CPU), ``state`` (the previous run's snapshot), ``report`` (movement,
error rate, drain), ``health`` (the verdict's rules), ``render`` (the human layout), ``watch`` (live progress),
``gather`` (one report from all of them), ``observe`` (the ramp's gate over a window), ``plan`` (the ramp's steps).
"""

from .cli import main

__all__ = ["main"]
