"""The proof / ops CLI (``python -m consumer.proof``): is the pipeline healthy, and how fast is the backlog draining?

One module per concern: ``cli`` (commands and exit codes), ``config`` (settings), ``collect`` (Redis reads),
``systemd`` (unit state, journal), ``cpu`` (unit CPU), ``state`` (the previous run's snapshot), ``report`` (rates,
error rate, drain), ``health`` (the verdict's rules), ``render`` (the human layout), ``watch`` (live progress),
``gather`` (one report from all of them), ``observe`` (the ramp's gate over a window).
"""

from .cli import main

__all__ = ["main"]
