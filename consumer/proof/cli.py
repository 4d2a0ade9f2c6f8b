"""The proof / ops CLI: is the pipeline healthy, and how fast is the backlog draining?

    python -m consumer.proof [--once]       full report in a compact human layout, then VERDICT (default)
    python -m consumer.proof --json         the same report as one JSON object (schemas/report.schema.json)
    python -m consumer.proof --watch        live backlog-drain progress bar, rates and ETA until Ctrl-C

The seed's monitoring commands, each one command (all accept --json):

    python -m consumer.proof stream         stream health: result stream advancing, intent stream, group present
    python -m consumer.proof backlog        lag, pending, every consumer of the group (host, pending, idle, live),
                                            drain rate/ETA, dead letters
    python -m consumer.proof rate           rate limiters: every quantum:rate:* key, count, TTL, next reset
    python -m consumer.proof stale-drops    STALE_INTENT_DROP lines of quantum-execution in the journal (last hour)
    python -m consumer.proof units          systemd state (and CPU over the sample window) of both units
    python -m consumer.proof observe        sample over --window and decide healthy/unhealthy/hold (the ramp's gate;
                                            exit 0/1/3, rules in consumer/proof/observe.py); with
                                            --metrics-source prometheus --prometheus-url URL the same rules judge
                                            what Prometheus scraped over the window (consumer/proof/promsource.py)
    python -m consumer.proof plan           the ramp's next step from the phase table, state, settings file and an
                                            observation (--json; rules in consumer/proof/plan.py)

Exit codes: 0 healthy, 1 unhealthy (reasons on the VERDICT line), 2 Redis unreachable (one line on stderr),
64 usage error (consumer/proof/exitcode.py). Health rules: consumer/proof/health.py; error rate and progress:
consumer/proof/metrics.py and consumer/proof/report.py.
Reads Redis (REDIS_URL, INTENT_STREAM, RESULT_STREAM, DLQ_STREAM, CONSUMER_GROUP) and systemd; writes only its own
snapshot (PROOF_STATE_DIR, else /var/lib/quantum/proof when writable, else $XDG_STATE_HOME/quantum/proof).
A consumer's host is read from the service's default name `<hostname>-<pid>`; it is live when it received entries
within PROOF_CONSUMER_LIVE_MS (default 15000; Redis 7.0 only resets idle time when a read returns entries).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from .config import ProofSettings, UsageError
from .exitcode import ExitCode
from .gather import RedisUnreachable, gather, open_redis
from .observe import Thresholds, exit_code, observe
from .promsource import PromSource
from .plan import main as plan_main
from .render import SECTIONS, header, render
from .sections import Report, as_json
from .systemd import count_stale_lines, journal_stale_drops
from .watch import watch

log = logging.getLogger("consumer.proof")

METRICS_SOURCES = ("proof", "prometheus")
COMMANDS = ("stream", "backlog", "rate", "stale-drops", "units", "observe", "plan")
# Which checks decide a subcommand's exit code, and which report keys its --json carries.
SECTION_CHECKS = {"stream": ("group", "progress"), "backlog": ("group", "progress"), "rate": (), "units": ("units",)}
SECTION_KEYS = {
    "stream": ("result_stream", "intent_stream", "movement", "movement_basis"),
    "backlog": ("group", "consumers", "drain", "dlq", "movement"),
    "rate": ("rate_limiters",),
    "units": ("systemd", "cpu"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # exit 64, so that exit 2 always means "Redis unreachable"
        self.print_usage(sys.stderr)
        print(f"proof: {message}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m consumer.proof", usage="%(prog)s [COMMAND] [options]  (commands and exit codes below)",
                description=__doc__, epilog="More: docs/proof.md", formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="full report, human layout (default)")
    mode.add_argument("--watch", action="store_true", help="live drain view until Ctrl-C")
    p.add_argument("--json", action="store_true", help="the report (or a command's section) as one JSON object")
    p.add_argument("--sample-sec", type=float, help="sample window in seconds (PROOF_SAMPLE_SEC, default 2)")
    p.add_argument("--error-rate-max", type=float, help="error-rate threshold 0..1 (PROOF_ERROR_RATE_MAX, 0.05)")
    p.add_argument("--state-dir", type=Path, help="snapshot directory (PROOF_STATE_DIR)")
    p.add_argument("--no-state", action="store_true", help="neither read nor write the previous-run snapshot")
    p.add_argument("--no-systemd", action="store_true", help="skip systemd even where it is present")
    p.add_argument("--cpu-pid", type=int, action="append", default=[], help="also measure this PID's CPU")
    p.add_argument("--interval", type=float, default=1.0, help="--watch redraw interval in seconds")
    p.add_argument("--rate-window", type=float, default=10.0, help="--watch rate window in seconds")
    p.add_argument("--iterations", type=int, default=0, help="--watch: stop after N frames (0 = until Ctrl-C)")
    p.add_argument("--until-drained", action="store_true", help="--watch: stop once lag and pending are 0")
    p.add_argument("--since", default="-1h", help="stale-drops: journal window (journalctl --since), default -1h")
    p.add_argument("--unit", default="quantum-execution", help="stale-drops: unit whose journal is read")
    p.add_argument("--log-file", type=Path, help="stale-drops: count in this file instead of the journal")
    o = p.add_argument_group("observe (the ramp's gate)")
    o.add_argument("--window", type=float, default=30.0, help="observation window in seconds (default 30)")
    o.add_argument("--warmup", type=float, default=0.0, help="seconds to wait before the first sample")
    o.add_argument("--cpu-unit", default="quantum-execution", help="unit whose CPU is judged")
    o.add_argument("--cpu-max", type=float, default=Thresholds.cpu_max,
                    help="CPU limit, percent of one core (default 80)")
    o.add_argument("--lag-growth-min", type=int, default=Thresholds.lag_growth_min,
                    help="backlog growth that may count as increasing")
    o.add_argument("--lag-slope-max", type=float, default=Thresholds.lag_slope_max,
                    help="backlog slope (entries/s) that may count")
    o.add_argument("--failure-limit", type=int, default=Thresholds.failure_limit,
                    help="failing samples tolerated per rule (default 1)")
    o.add_argument("--error-min-consumed", type=int, default=Thresholds.error_min_consumed,
                    help="consumed entries needed to judge errors")
    o.add_argument("--metrics-source", choices=METRICS_SOURCES, default=None,
                   help="where the window's numbers come from: proof (its own sampling, default) or prometheus "
                        "(PROOF_METRICS_SOURCE)")
    o.add_argument("--prometheus-url", help="Prometheus base URL, e.g. http://10.0.0.5:9090 (PROOF_PROMETHEUS_URL)")
    o.add_argument("--prometheus-host", help="`host` label of this execution service's target (default: hostname)")
    o.add_argument("--prometheus-job", default=PromSource.job, help="`job` of the execution services' targets")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def settings_from(args: argparse.Namespace) -> ProofSettings:
    s = ProofSettings.from_env()
    changes: dict[str, Any] = {}
    if args.sample_sec is not None:
        if not 0 <= args.sample_sec <= 600:
            raise UsageError("--sample-sec must be within 0..600")
        changes["sample_sec"] = args.sample_sec
    if args.error_rate_max is not None:
        if not 0 <= args.error_rate_max <= 1:
            raise UsageError("--error-rate-max must be within 0..1")
        changes["error_rate_max"] = args.error_rate_max
    if args.state_dir is not None:
        changes["state_dir"] = args.state_dir
    if args.no_systemd:
        changes["systemd"] = False
    if args.interval <= 0 or args.rate_window <= 0:
        raise UsageError("--interval and --rate-window must be > 0")
    return dataclasses.replace(s, **changes)


def print_json(obj: Any) -> None:
    json.dump(as_json(obj), sys.stdout, sort_keys=False, default=str)
    sys.stdout.write("\n")


def run_stale_drops(args: argparse.Namespace) -> int:
    """Count STALE_INTENT_DROP lines (and the suppressed drops reported beside them) in the journal or a file."""
    if args.log_file is not None:
        try:
            with args.log_file.open(errors="replace") as fh:
                res: dict[str, Any] = {"present": True, "source": str(args.log_file), **count_stale_lines(fh)}
        except OSError as exc:
            raise UsageError(f"--log-file {args.log_file}: {exc.strerror}") from None
    else:
        res = journal_stale_drops(args.unit, args.since)
    if args.json:
        print_json(res)
    elif not res["present"]:
        print("stale-drops: journal not present (systemd is not running here); use --log-file FILE")
    elif res.get("error"):
        print(f"stale-drops: journalctl failed: {res['error']}")
    else:
        where = res.get("source") or f"journal of {res['unit']} since {res['since']}"
        print(f"stale-drops: {res['lines']} STALE_INTENT_DROP line(s) in {where}, "
              f"{res['suppressed']} more drop(s) reported as suppressed")
    return ExitCode.UNHEALTHY if res.get("error") else ExitCode.OK


def run_section(command: str, rep: Report, json_out: bool) -> int:
    """Print one section of the report; its exit code follows only the checks that concern it."""
    wanted = SECTION_CHECKS[command]
    assert rep.health is not None
    failed = rep.health.failed(wanted)
    if json_out:
        out = {k: as_json(getattr(rep, k)) for k in SECTION_KEYS[command]}
        out.update(generated_at=rep.generated_at, healthy=not failed, reasons=[c.detail for c in failed])
        print_json(out)
    else:
        lines = header(rep)
        for fn in SECTIONS.get(command, ()):
            lines += fn(rep)
        if wanted:
            lines.append("VERDICT: HEALTHY" if not failed
                         else "VERDICT: UNHEALTHY: " + "; ".join(c.detail for c in failed))
        print("\n".join(lines))
    return ExitCode.UNHEALTHY if failed else ExitCode.OK


def prometheus_from(args: argparse.Namespace, env: Mapping[str, str]) -> PromSource | None:
    """The Prometheus source when --metrics-source (else PROOF_METRICS_SOURCE) says prometheus; None for the proof's
    own sampling."""
    source = args.metrics_source or env.get("PROOF_METRICS_SOURCE", "").strip() or "proof"
    if source not in METRICS_SOURCES:
        raise UsageError(f"PROOF_METRICS_SOURCE={source!r} is not one of {', '.join(METRICS_SOURCES)}")
    if source == "proof":
        return None
    url = (args.prometheus_url or env.get("PROOF_PROMETHEUS_URL", "")).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--prometheus-url (PROOF_PROMETHEUS_URL) must be an http(s) URL with a host, got {url!r}")
    host = args.prometheus_host or PromSource(url).host
    return PromSource(url, host=host, job=args.prometheus_job)


def run_observe(settings: ProofSettings, args: argparse.Namespace) -> int:
    """The ramp's gate: decision JSON (or its summary line); exit 0 healthy, 1 unhealthy, 3 hold."""
    if args.window <= 0 or args.warmup < 0 or args.failure_limit < 0:
        raise UsageError("--window must be > 0, --warmup and --failure-limit >= 0")
    prometheus = prometheus_from(args, os.environ)
    th = Thresholds(error_rate_max=settings.error_rate_max, error_min_consumed=args.error_min_consumed,
                    cpu_max=args.cpu_max, lag_growth_min=args.lag_growth_min, lag_slope_max=args.lag_slope_max,
                    failure_limit=args.failure_limit)
    result = observe(settings, th, window=args.window, interval=args.interval, warmup=args.warmup,
                     unit=args.cpu_unit, pid=args.cpu_pid[0] if args.cpu_pid else None, prometheus=prometheus)
    if args.json:
        print_json(result)
    else:
        print(result["summary"])
    return exit_code(result)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else None
    if command == "plan":  # the ramp's decisions: reads files, never Redis (consumer/proof/plan.py)
        return plan_main(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), stream=sys.stderr,
                        format="proof: %(levelname)s %(name)s: %(message)s")
    try:
        if command == "stale-drops":
            return run_stale_drops(args)
        settings = settings_from(args)
        if command == "observe":
            return run_observe(settings, args)
        if command == "rate":
            settings = dataclasses.replace(settings, sample_sec=0.0)
        r = open_redis(settings)
        if args.watch:
            return watch(settings, r, interval=args.interval, rate_window=args.rate_window,
                         iterations=args.iterations, until_drained=args.until_drained)
        rep = gather(settings, r, use_state=not args.no_state and command is None, cpu_pids=tuple(args.cpu_pid))
    except UsageError as exc:
        print(f"proof: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except RedisUnreachable as exc:
        print(f"proof: {exc}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    if command is not None:
        return run_section(command, rep, args.json)
    if args.json:
        print_json(rep)
    else:
        print(render(rep))
    assert rep.health is not None
    return ExitCode.OK if rep.health.healthy else ExitCode.UNHEALTHY
