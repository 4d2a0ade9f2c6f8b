"""`--watch`: redraw the backlog drain live — progress bar, read rate, net drain rate and ETA — until Ctrl-C.

Plain ANSI (cursor home, clear to end of line/screen) instead of a TUI library: the hosts' release venv installs only
requirements.txt, and a progress bar is not worth a dependency there. On a non-terminal stdout (a pipe, a log) each
tick is one plain line instead, so `--watch | tee drain.log` records the drain.

Progress is measured against the largest backlog seen since the watch started, so live inflow raises the total
rather than making the bar go backwards for no visible reason. Rates come from the oldest and newest samples inside
`--rate-window` seconds.
"""

from __future__ import annotations

import collections
import logging
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

import redis

from . import collect
from .config import ProofSettings, redact_url
from .metrics import ErrorTally, counter_deltas, per_sec
from .render import clock, dur, n
from .systemd import units_state

log = logging.getLogger(__name__)

HOME, CLEAR_EOL, CLEAR_EOS = "\x1b[H", "\x1b[K", "\x1b[J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
UNITS_EVERY_SEC = 5.0


def bar(fraction: float, width: int, unicode_ok: bool) -> str:
    """[█████░░░░░] with `width` cells."""
    full, empty = ("█", "░") if unicode_ok else ("#", "-")
    cells = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + full * cells + empty * (width - cells) + "]"


@dataclass
class DrainView:
    """One frame's numbers: the backlog against its peak, per-second rates over the rate window, the ETA."""

    t: float
    backlog: int | None
    peak: int
    fraction: float
    lag: int | None
    pending: int
    read_per_sec: float | None
    in_per_sec: float | None
    results_per_sec: float | None
    net_per_sec: float | None
    eta_sec: float | None
    span: float
    group_exists: bool
    errors: ErrorTally
    counters: dict[str, int]
    results_length: int
    dlq_length: int


class DrainTracker:
    """Samples within the rate window, and the peak backlog the progress bar is measured against."""

    def __init__(self, rate_window: float):
        self.rate_window = rate_window
        self.samples: collections.deque[collect.Sample] = collections.deque()
        self.peak = 0

    def add(self, s: collect.Sample) -> None:
        self.samples.append(s)
        while len(self.samples) > 2 and s.t - self.samples[0].t > self.rate_window:
            self.samples.popleft()
        if s.backlog is not None:
            self.peak = max(self.peak, s.backlog)

    def view(self) -> DrainView:
        """Backlog, progress fraction, per-second rates and ETA from the current window."""
        last, first = self.samples[-1], self.samples[0]
        span = last.t - first.t
        backlog = last.backlog

        def rate(get: Callable[[collect.Sample], int | None]) -> float | None:
            # From the oldest sample in the window that knows the value (entries-read can be nil early on, and the
            # group may appear after the watch started).
            known = [(x, v) for x in self.samples if (v := get(x)) is not None]
            if len(known) < 2 or known[-1][0] is not last:
                return None
            (x0, v0), (_, v1) = known[0], known[-1]
            return per_sec(v1 - v0, last.t - x0.t)

        read = rate(lambda s: s.group.entries_read)
        inflow = rate(lambda s: s.intents.entries_added)
        results = rate(lambda s: s.results.entries_added)
        drained = rate(lambda s: None if s.backlog is None else -s.backlog)
        net = None if backlog is None else drained
        deltas = counter_deltas(first.counters.values, last.counters.values)
        tally = ErrorTally.of(deltas) if deltas is not None else ErrorTally(0, 0)
        if backlog == 0:
            eta: float | None = 0.0
        elif backlog and net and net > 0:
            eta = backlog / net
        else:
            eta = None
        return DrainView(
            t=last.t, backlog=backlog, peak=self.peak,
            fraction=1.0 if not self.peak else (self.peak - (backlog or 0)) / self.peak,
            lag=last.group.lag, pending=last.group.pending,
            read_per_sec=read, in_per_sec=inflow, results_per_sec=results, net_per_sec=net,
            eta_sec=eta, span=span, group_exists=last.group.exists,
            errors=tally, counters=last.counters.values,
            results_length=last.results.length, dlq_length=last.dlq_length,
        )


def _rate_text(v: float | None) -> str:
    return "?" if v is None else f"{v:,.1f}/s"


def frame_lines(v: DrainView, s: ProofSettings, units: dict[str, Any], width: int, unicode_ok: bool,
                interval: float) -> list[str]:
    """The lines of one live frame."""
    lines = [f"quantum proof --watch · {redact_url(s.redis_url)} · {clock(v.t)} · every {interval}s · "
             "Ctrl-C to quit"]
    if not v.group_exists:
        lines.append(f"backlog  group {s.group} missing on {s.intent_stream} — waiting for the service")
    else:
        bw = max(10, min(50, width - 45))
        done = v.peak - (v.backlog or 0)
        state = "drained" if v.backlog == 0 else f"ETA {dur(v.eta_sec)}"
        lines.append(f"backlog  {bar(v.fraction, bw, unicode_ok)} {v.fraction * 100:5.1f}%  "
                     f"drained {n(done)} of {n(v.peak)}  {state}")
        lines.append(f"         left {n(v.backlog)} (lag {n(v.lag)} + pending {n(v.pending)})  "
                     f"read {_rate_text(v.read_per_sec)}  in {_rate_text(v.in_per_sec)}  "
                     f"net {_rate_text(v.net_per_sec)}")
    tally = v.errors
    err = ("n/a (idle)" if tally.rate is None
           else f"{tally.rate * 100:.2f}% ({n(tally.errors)}/{n(tally.consumed)} in {dur(v.span)})")
    lines.append(f"results  length {n(v.results_length)}  {_rate_text(v.results_per_sec)}   errors {err}   "
                 f"dlq {n(v.dlq_length)}")
    shown = {k: x for k, x in v.counters.items() if x or k in ("consumed", "executed", "failed")}
    lines.append("counters " + "  ".join(f"{k} {n(x)}" for k, x in shown.items())
                 + ("  (others 0)" if len(shown) < len(v.counters) else ""))
    if units.get("present"):
        lines.append("units    " + " · ".join(f"{k} {u.get('active_state')}/{u.get('sub_state')}"
                                              for k, u in units["units"].items()))
    else:
        lines.append("units    systemd: not present")
    return lines


def plain_line(v: DrainView) -> str:
    """One log line per tick for a non-terminal stdout."""
    return (f"{clock(v.t)} backlog {n(v.backlog)} ({v.fraction * 100:.1f}% drained of {n(v.peak)}) "
            f"read {_rate_text(v.read_per_sec)} net {_rate_text(v.net_per_sec)} ETA {dur(v.eta_sec)} "
            f"results {_rate_text(v.results_per_sec)}")


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT (Ctrl-C) and SIGTERM end a watch: restore the cursor, exit 0."""
    raise KeyboardInterrupt


def watch(settings: ProofSettings, r: redis.Redis, *, interval: float = 1.0, rate_window: float = 10.0,
          iterations: int = 0, until_drained: bool = False, out: TextIO = sys.stdout) -> int:
    """Redraw until Ctrl-C/SIGTERM, `iterations` frames, or (with until_drained) an empty backlog. Returns 0."""
    tty = out.isatty()
    unicode_ok = (getattr(out, "encoding", "") or "").lower().replace("-", "") in ("utf8", "utf_8")
    tracker = DrainTracker(rate_window)
    units: dict[str, Any] = {"present": False, "units": {}}
    units_at = float("-inf")
    # Both set explicitly: Python turns SIGINT into KeyboardInterrupt only when the process did not inherit it as
    # ignored, and a shell starting a job in the background without job control (`cmd &` in a script, CI runners)
    # passes SIGINT on ignored. Ctrl-C is how a watch is meant to end, so it must not depend on who started it.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    count = 0
    if tty:
        out.write(HIDE_CURSOR + HOME + CLEAR_EOS)
    try:
        while True:
            started = time.monotonic()
            if started - units_at >= UNITS_EVERY_SEC:
                units, units_at = units_state(settings.units, enabled=settings.systemd), started
            try:
                tracker.add(collect.take_sample(r, settings))
                v = tracker.view()
                lines = frame_lines(v, settings, units, shutil.get_terminal_size().columns, unicode_ok, interval)
                text = plain_line(v)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                v = None
                text = f"Redis unreachable at {redact_url(settings.redis_url)}: {exc} (retrying)"
                lines = [text]
            if tty:
                # A wrapped line would shift every later frame: cut each line to the terminal width.
                cols = max(20, shutil.get_terminal_size().columns - 1)
                out.write(HOME + "".join(line[:cols] + CLEAR_EOL + "\n" for line in lines) + CLEAR_EOS)
            else:
                out.write(text + "\n")
            out.flush()
            count += 1
            if iterations and count >= iterations:
                return 0
            if until_drained and v is not None and v.backlog == 0:
                return 0
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0
    finally:
        if tty:
            out.write(SHOW_CURSOR)
        out.flush()
