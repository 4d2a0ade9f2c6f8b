"""`proof plan`: every decision of the ramp, as one pure function the role calls at each point of a run.

The role (ansible/roles/quantum_ramp) reads the files, runs `proof observe` on the host, and asks this module what to
do; it then applies, restarts, asserts and records what the returned Step says. Keeping the rules here means each of
them is unit-tested in milliseconds (tests/test_ramp_plan.py) instead of only by booting a lab host.

One run calls `plan` up to three times with the same phases, state and settings (all read once at the start):

* without an observation: keep (already applied), refuse (unknown phase, bad table, skipped phases), gate (more load
  than now: observe the current phase first) or apply (less load: no gate needed);
* with the gate's observation: hold (unreadable), refuse (unhealthy) or apply;
* with the observation of the applied phase: keep (healthy), hold (unreadable: no rollback), step_back (lag
  increasing: COUNT one rung down; CPU too high: CONCURRENCY one rung down; error rate too high or unhealthy
  otherwise: the previous phase) or floor (unhealthy with nothing lower to go to).

A target of "status" returns the lines of the status report instead (the observation is then the live proof report).
The table's ranges are the service's own: each value is parsed by consumer.config, so no range is written here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import Config, ConfigError
from .exitcode import ExitCode
from .observe import Thresholds

log = logging.getLogger(__name__)

PURPOSES = ("gate", "observe", "live")
# The exit codes with which `proof observe` and the report answer on stdout (any other: the proof could not look).
OBSERVE_RCS = (ExitCode.OK, ExitCode.UNHEALTHY, ExitCode.HOLD)
LIVE_RCS = (ExitCode.OK, ExitCode.UNHEALTHY)
RAMP_VARIABLES = ("xreadgroup_count", "exec_concurrency")
TABLE = "vars/ramp_phases.yml"


@dataclass(frozen=True)
class Phase:
    """One row of the phase table."""

    number: int
    xreadgroup_count: int
    exec_concurrency: int


@dataclass(frozen=True)
class RampState:
    """The host's state file (phase=None when there is none or it records no phase)."""

    phase: int | None = None
    status: str | None = None
    updated_at: str | None = None
    action: str | None = None
    summary: str | None = None


@dataclass(frozen=True)
class Settings:
    """The two ramp values in force in the host's settings file (None when the line is missing)."""

    xreadgroup_count: int | None = None
    exec_concurrency: int | None = None


@dataclass(frozen=True)
class Observation:
    """What `proof observe` decided over a window (or the live report for a status), and for which purpose."""

    purpose: str
    decision: str
    fired: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = ()
    summary: str = ""
    measurements: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Context:
    """Names and limits that only appear in messages (the host, files, windows, thresholds)."""

    host: str = "localhost"
    unit: str = "quantum-execution"
    env_file: str = "/etc/quantum/ai-engine.env"
    state_file: str = "/var/lib/quantum/ramp/state.json"
    gate_window_sec: float = 60
    observe_window_sec: float = 60
    error_rate_max: float = Thresholds.error_rate_max  # the observe thresholds, written once
    cpu_max: float = Thresholds.cpu_max


@dataclass(frozen=True)
class Step:
    """What the role does next: the action, the values to apply or record, the rule that fired and why."""

    action: str  # status | keep | refuse | gate | apply | hold | step_back | floor
    rule: str  # the rule that decided (e.g. already_applied, skip, error_rate_high, lag_increasing+cpu_high)
    message: str  # what the role prints (or fails with)
    fail: bool = False  # the play stops on this host with `message`
    current: int = 0  # the phase the run started from
    target: int | None = None
    phase: int | None = None  # the phase to record
    xreadgroup_count: int | None = None  # the values to apply / record
    exec_concurrency: int | None = None
    status: str | None = None  # the state file's status to record
    record: str | None = None  # the state file's action text
    from_count: int = 0
    from_conc: int = 0
    to_count: int | None = None
    to_conc: int | None = None
    measured: str | None = None  # "gate of phase 2 on host: ..." after an observation
    measurements: dict[str, Any] | None = None  # the observation without its samples, for the state file
    gate: str = "not needed (less load than now)"  # the dry run's gate line
    would: str = ""  # the dry run's account of what a real run would do
    lines: list[str] = field(default_factory=list)  # the status report


class PlanError(ValueError):
    """An input the plan cannot work with (names the input)."""


# ---------------------------------------------------------------------------------------------------------------- inputs

def _service_error(name: str, value: Any) -> str | None:
    """The service's own complaint about NAME=value, or None when it would accept it (ranges written once)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{name}={value!r} is not an integer"
    try:
        Config.from_env({name: str(value)})
    except ConfigError as exc:
        return str(exc) if str(exc).startswith(f"{name}=") else None
    return None


def parse_phases(raw: Mapping[Any, Any]) -> tuple[dict[int, Phase], list[str]]:
    """The phase table (keys 1..N, values the service accepts, none going down) and the problems found in it."""
    problems: list[str] = []
    if not isinstance(raw, Mapping) or not raw:
        return {}, [f"{TABLE} must map phases 1..N to xreadgroup_count and exec_concurrency"]
    phases: dict[int, Phase] = {}
    for key, row in raw.items():
        try:
            number = int(key)
        except (TypeError, ValueError):
            problems.append(f"phase {key!r} is not a number")
            continue
        if not isinstance(row, Mapping):
            problems.append(f"phase {number} is not a mapping")
            continue
        bad = [err for var in RAMP_VARIABLES if (err := _service_error(var.upper(), row.get(var)))]
        problems += [f"phase {number}: {err}" for err in bad]
        if not bad:
            phases[number] = Phase(number, row["xreadgroup_count"], row["exec_concurrency"])
    if sorted(int(k) for k in raw if str(k).lstrip("-").isdigit()) != list(range(1, len(raw) + 1)):
        problems.append(f"phases must be numbered 1..{len(raw)} without gaps")
    rows = [phases[n] for n in sorted(phases)]
    for a, b in zip(rows, rows[1:]):
        for var in RAMP_VARIABLES:
            if getattr(b, var) < getattr(a, var):
                problems.append(f"{var} goes down from phase {a.number} to phase {b.number}")
    return phases, problems


def parse_state(raw: Mapping[str, Any] | None) -> RampState:
    """The state file's document ({} or None: no state)."""
    if not isinstance(raw, Mapping):
        return RampState()
    phase = raw.get("phase")
    if phase is not None and not str(phase).isdigit():
        raise PlanError(f"the state file's phase {phase!r} is not a phase number")
    measurements = raw.get("measurements") if isinstance(raw.get("measurements"), Mapping) else {}
    return RampState(phase=int(phase) if phase is not None else None, status=raw.get("status"),
                     updated_at=raw.get("updated_at"), action=raw.get("action"),
                     summary=measurements.get("summary"))


def parse_settings(text: str) -> Settings:
    """The XREADGROUP_COUNT= and EXEC_CONCURRENCY= lines of the settings file (a leading quote is allowed)."""
    def value(name: str) -> int | None:
        m = re.search(rf"(?m)^{name}=\D?([0-9]+)", text)
        return int(m.group(1)) if m else None
    return Settings(value("XREADGROUP_COUNT"), value("EXEC_CONCURRENCY"))


def _trim(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_observation(raw: Mapping[str, Any] | None, purpose: str) -> Observation | None:
    """An observation from `proof observe --json` (or the report, for purpose live), or from the registered result of
    the command that ran it ({rc, stdout, stderr, msg}). A proof that could not run or answer is unreadable: hold."""
    if raw is None:
        return None
    if purpose not in PURPOSES:
        raise PlanError(f"purpose {purpose!r} is not one of {', '.join(PURPOSES)}")
    doc: Any = raw
    if "rc" in raw or "stdout" in raw:
        rc, stdout = raw.get("rc"), str(raw.get("stdout") or "")
        try:
            doc = json.loads(stdout) if rc in (LIVE_RCS if purpose == "live" else OBSERVE_RCS) else None
        except ValueError:
            doc = None
        if not isinstance(doc, Mapping):
            why = str(raw.get("stderr") or raw.get("msg") or "")
            failed = f"the proof could not run (rc {rc if rc is not None else '?'}): {_trim(why)}"
            return Observation(purpose, "hold", unreadable=("proof",), error=failed,
                               summary=failed if purpose == "live" else f"HOLD: {failed}")
    if purpose == "live":
        return Observation(purpose, "live", report=dict(doc))
    keep = ("summary", "decision", "fired", "unreadable", "rules", "window_sec")
    return Observation(purpose, str(doc.get("decision", "hold")), fired=tuple(doc.get("fired") or ()),
                       unreadable=tuple(doc.get("unreadable") or ()), summary=str(doc.get("summary", "")),
                       measurements={k: doc.get(k) for k in keep})


# ------------------------------------------------------------------------------------------------------------- decisions

def current_phase(phases: Mapping[int, Phase], state: RampState, settings: Settings) -> int:
    """The state file's phase, else the table row the settings file matches, else 0."""
    if state.phase is not None:
        return state.phase
    matching = [p.number for p in sorted(phases.values(), key=lambda p: p.number)
                if (p.xreadgroup_count, p.exec_concurrency) == (settings.xreadgroup_count, settings.exec_concurrency)]
    return matching[0] if matching else 0


def _pct(value: float) -> str:
    """Percent as the messages always printed it (0.05 -> 5.0)."""
    return str(round(value * 100, 6))


def _num(value: float) -> str:
    """A limit without a spurious .0 (80.0 -> 80)."""
    return f"{value:g}"


def _rung(values: Sequence[int], below: int) -> int:
    """The highest distinct value of the table under `below` (itself when there is none)."""
    lower = sorted({v for v in values if v < below})
    return lower[-1] if lower else below


def status_lines(phases: Mapping[int, Phase], state: RampState, settings: Settings, current: int, ctx: Context,
                 live: Observation | None) -> list[str]:
    """phase=status: the recorded phase, the values in force, the table, the last decision, live measurements."""
    where = (f"status {state.status}, updated {state.updated_at}" if state.status is not None
             else "no ramp state: phase inferred from the settings file")
    table = " · ".join(f"{p.number}/{p.xreadgroup_count}/{p.exec_concurrency}"
                       for p in sorted(phases.values(), key=lambda p: p.number))
    return [
        f"phase {current} of {len(phases)} on {ctx.host} ({where})",
        f"in force ({ctx.env_file}): XREADGROUP_COUNT={settings.xreadgroup_count}, "
        f"EXEC_CONCURRENCY={settings.exec_concurrency}",
        f"table: {table} (phase/COUNT/CONCURRENCY)",
        f"last decision: {state.action or 'none'}; {state.summary or ''}",
        live_line(live, ctx.unit),
    ]


def live_line(live: Observation | None, unit: str) -> str:
    """One line of live measurements from a proof report."""
    if live is None or live.report is None:
        return f"live: proof unavailable: {live.error if live else 'not run'}"
    rep = live.report
    group, err = rep.get("group") or {}, rep.get("error_rate") or {}
    cpu = (((rep.get("systemd") or {}).get("units") or {}).get(unit) or {}).get("cpu") or {}
    health = rep.get("health") or {}
    rate = err.get("value")
    reasons = health.get("reasons") or []
    return (f"live: lag {group.get('lag')}, pending {group.get('pending')}, "
            f"results +{(rep.get('movement') or {}).get('results_per_sec', '?')}/s, "
            f"error rate {'n/a' if rate is None else round(rate * 100, 2)} % ({err.get('basis')}), "
            f"CPU {cpu.get('percent', 'n/a')} % ({cpu.get('source', 'no source')}), "
            f"{health.get('verdict')}" + (f": {'; '.join(reasons)}" if reasons else ""))


def plan(phases: Mapping[int, Phase], state: RampState, settings: Settings, target: int | str,
         observation: Observation | None = None, force: bool = False, ctx: Context = Context(),
         problems: Sequence[str] = ()) -> Step:
    """What to do next on this host (see the module's docstring for the three points of a run)."""
    current = current_phase(phases, state, settings)
    base = Step(action="refuse", rule="", message="", current=current, from_count=settings.xreadgroup_count or 0,
                from_conc=settings.exec_concurrency or 0)
    if problems:
        return dataclasses.replace(base, rule="table", fail=True, message=(
            f"{TABLE} must map phases 1..N to xreadgroup_count and exec_concurrency that the service accepts and "
            f"that never go down: {'; '.join(problems)}"))
    if str(target) == "status":
        lines = status_lines(phases, state, settings, current, ctx, observation)
        return dataclasses.replace(base, action="status", rule="status", message="\n".join(lines), lines=lines)
    if not re.fullmatch(r"[0-9]+", str(target)) or int(target) not in phases:
        return dataclasses.replace(base, rule="unknown_phase", fail=True, message=(
            f"phase={target} is not a phase of {TABLE} ({', '.join(str(n) for n in sorted(phases))}) nor 'status'"))
    to = phases[int(target)]
    step = dataclasses.replace(base, target=to.number, to_count=to.xreadgroup_count, to_conc=to.exec_concurrency,
                               phase=to.number, xreadgroup_count=to.xreadgroup_count,
                               exec_concurrency=to.exec_concurrency)
    step = dataclasses.replace(step, would=(
        f"would set XREADGROUP_COUNT {step.from_count} -> {to.xreadgroup_count}, EXEC_CONCURRENCY {step.from_conc} -> "
        f"{to.exec_concurrency} in {ctx.env_file}, restart {ctx.unit} only, observe {_num(ctx.observe_window_sec)} s "
        "and step back if needed"))
    if observation is not None and observation.purpose == "observe":
        return judge_applied(phases, step, observation, ctx)
    if (to.number, to.xreadgroup_count, to.exec_concurrency) == (current, step.from_count, step.from_conc):
        return dataclasses.replace(step, action="keep", rule="already_applied", message=(
            f"Phase {to.number} is already applied on {ctx.host} (XREADGROUP_COUNT={to.xreadgroup_count}, "
            f"EXEC_CONCURRENCY={to.exec_concurrency}): nothing changed, nothing restarted"))
    if not force and to.number > current + 1:
        return dataclasses.replace(step, rule="skip", fail=True, message=(
            f"REFUSED on {ctx.host}: the ramp is at phase {current} and moves one phase at a time; phase {to.number} "
            f"skips {to.number - current - 1} phase(s). Apply phase {current + 1} first, or pass -e force=true."))
    apply = dataclasses.replace(step, action="apply", status="observing",
                                record=f"applied phase {to.number} (from phase {current})")
    up = (to.number > current or to.xreadgroup_count > step.from_count or to.exec_concurrency > step.from_conc)
    if not up:
        return dataclasses.replace(apply, rule="less_load", message=f"phase {to.number} adds no load: no gate needed")
    if observation is None:
        return dataclasses.replace(step, action="gate", rule="more_load", message=(
            f"phase {to.number} adds load: phase {current} must first be healthy over "
            f"{_num(ctx.gate_window_sec)} s"))
    return judge_gate(apply, observation, ctx)


def _measured(step: Step, obs: Observation, ctx: Context) -> dict[str, Any]:
    of = step.current if obs.purpose == "gate" else step.target
    return {"measured": f"{obs.purpose} of phase {of} on {ctx.host}: {obs.summary}",
            "measurements": obs.measurements or {"summary": obs.summary, "decision": obs.decision,
                                                 "fired": list(obs.fired), "unreadable": list(obs.unreadable),
                                                 "rules": {}, "window_sec": None}}


def judge_gate(apply: Step, obs: Observation, ctx: Context) -> Step:
    """The current phase over the gate window: healthy applies; unreadable holds; unhealthy refuses."""
    step = dataclasses.replace(apply, gate=obs.summary, **_measured(apply, obs, ctx))
    if obs.decision == "healthy":
        return dataclasses.replace(step, rule="gate_healthy", message=f"gate passed: {obs.summary}")
    would = f"would refuse/hold (gate {obs.decision})"
    if obs.decision == "unhealthy":
        return dataclasses.replace(step, action="refuse", rule="gate_unhealthy", fail=True, would=would, message=(
            f"REFUSED on {ctx.host}: phase {apply.current} was not healthy over the last "
            f"{_num(ctx.gate_window_sec)} s ({', '.join(obs.fired)}); nothing changed. Measured: {obs.summary}"))
    return dataclasses.replace(step, action="hold", rule="unreadable", fail=True, would=would, message=(
        f"HOLD on {ctx.host}: cannot judge phase {apply.current} because the metrics of "
        f"{', '.join(obs.unreadable)} could not be read; nothing changed (no decision). Measured: {obs.summary}"))


def judge_applied(phases: Mapping[int, Phase], step: Step, obs: Observation, ctx: Context) -> Step:
    """The applied phase over the observation window: keep, hold, or step back by the rules that fired."""
    step = dataclasses.replace(step, **_measured(step, obs, ctx))
    to = phases[step.target or 0]
    if obs.decision == "healthy":
        return dataclasses.replace(step, action="keep", rule="healthy", status="healthy", message=(
            f"PHASE {to.number} APPLIED AND HEALTHY on {ctx.host}: XREADGROUP_COUNT {step.from_count} -> "
            f"{to.xreadgroup_count}, EXEC_CONCURRENCY {step.from_conc} -> {to.exec_concurrency}. "
            f"Measured: {obs.summary}"),
            record=f"phase {to.number} healthy over {_num(ctx.observe_window_sec)} s")
    if obs.decision != "unhealthy":
        gone = ", ".join(obs.unreadable)
        return dataclasses.replace(step, action="hold", rule="unreadable", status="hold", fail=True,
                                   record=f"phase {to.number} applied, not judged: {gone} unreadable", message=(
            f"HOLD on {ctx.host}: phase {to.number} is applied but could not be judged ({gone} unreadable); no step "
            f"back, no further phase until it can be measured. Measured: {obs.summary}"))
    return step_back(phases, step, to, obs, ctx)


def step_back(phases: Mapping[int, Phase], step: Step, to: Phase, obs: Observation, ctx: Context) -> Step:
    """Lag increasing: COUNT one rung down; CPU high: CONCURRENCY one rung down (both when both fired); error rate
    high, or unhealthy for any other reason: the previous phase's values. Nothing lower: left as is (floor)."""
    lag, cpu, errors = ("lag_increasing" in obs.fired, "cpu_high" in obs.fired, "error_rate_high" in obs.fired)
    if errors or not (lag or cpu):
        prev = phases[step.current if 1 <= step.current < to.number else max(to.number - 1, 1)]
        phase, count, conc = prev.number, prev.xreadgroup_count, prev.exec_concurrency
        why = (f"error rate above {_pct(ctx.error_rate_max)} % -> previous phase" if errors
               else "pipeline unhealthy -> previous phase")
        rule = "error_rate_high" if errors else "unhealthy"
    else:
        counts = [p.xreadgroup_count for p in phases.values()]
        concs = [p.exec_concurrency for p in phases.values()]
        phase = to.number
        count = _rung(counts, to.xreadgroup_count) if lag else to.xreadgroup_count
        conc = _rung(concs, to.exec_concurrency) if cpu else to.exec_concurrency
        whys = (["lag increasing -> XREADGROUP_COUNT one rung down"] if lag else []) + (
            [f"CPU above {_num(ctx.cpu_max)} % -> EXEC_CONCURRENCY one rung down"] if cpu else [])
        why, rule = " and ".join(whys), "+".join(r for r, on in (("lag_increasing", lag), ("cpu_high", cpu)) if on)
    head = f"on {ctx.host}: phase {to.number} broke {', '.join(obs.fired)} within {_num(ctx.observe_window_sec)} s. " \
           f"Measured: {obs.summary}."
    if (count, conc) == (to.xreadgroup_count, to.exec_concurrency):
        return dataclasses.replace(step, action="floor", rule=rule, status="unhealthy_at_floor", fail=True,
                                   record=f"phase {to.number} unhealthy, nothing lower to step back to",
                                   message=f"UNHEALTHY AT THE LOWEST SETTINGS {head} Nothing lower to step back to: "
                                           "left as is; investigate.")
    return dataclasses.replace(
        step, action="step_back", rule=rule, status="stepped_back", fail=True, phase=phase, xreadgroup_count=count,
        exec_concurrency=conc, record=f"stepped back from phase {to.number}: {why}",
        message=(f"STEPPED BACK {head} Done: {why}: XREADGROUP_COUNT {to.xreadgroup_count} -> {count}, "
                 f"EXEC_CONCURRENCY {to.exec_concurrency} -> {conc}, restarted {ctx.unit}, recorded phase {phase} "
                 f"in {ctx.state_file}."))


# ------------------------------------------------------------------------------------------------------------------- CLI

def _load(path: str | None, what: str, stdin_doc: Mapping[str, Any] | None, key: str, as_text: bool = False) -> Any:
    """An input from --inputs' document (key), else from a file ('-' is stdin), else None."""
    if stdin_doc is not None and key in stdin_doc:
        return stdin_doc[key]
    if path is None:
        return None
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PlanError(f"{what} {path}: {exc.strerror}") from None
    if as_text:
        return text
    try:
        return json.loads(text) if text.strip() else None
    except ValueError as exc:
        raise PlanError(f"{what} {path} is not JSON: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m consumer.proof plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, exit_on_error=False)
    p.add_argument("--target", required=True, help="phase number or 'status'")
    p.add_argument("--force", nargs="?", const="true", default="false", choices=("true", "false"),
                   help="allow skipping phases upwards (--force, or --force true|false)")
    p.add_argument("--phases", help="phase table: JSON file ({\"1\": {xreadgroup_count, exec_concurrency}, ...})")
    p.add_argument("--state", help="the ramp state file (missing: no state)")
    p.add_argument("--env-file", help="the settings file holding XREADGROUP_COUNT= and EXEC_CONCURRENCY=")
    p.add_argument("--observation", help="`proof observe --json` output (or the command's registered result)")
    p.add_argument("--inputs", help="one JSON document with any of: phases, state, settings (text), observation "
                                    "('-' = stdin; its keys win over the files)")
    p.add_argument("--purpose", choices=("start", *PURPOSES), default="gate",
                   help="what the observation is: gate (default), observe (of the applied phase), live (status); "
                        "start: none yet")
    p.add_argument("--host", default="localhost")
    p.add_argument("--unit", default=Context.unit)
    p.add_argument("--env-name", help="settings file named in messages (default --env-file)")
    p.add_argument("--state-name", help="state file named in messages (default --state)")
    p.add_argument("--gate-window", type=float, default=Context.gate_window_sec)
    p.add_argument("--observe-window", type=float, default=Context.observe_window_sec)
    p.add_argument("--error-rate-max", type=float, default=Context.error_rate_max)
    p.add_argument("--cpu-max", type=float, default=Context.cpu_max)
    p.add_argument("--json", action="store_true", help="the Step as one JSON object (else its message)")
    return p


def main(argv: Sequence[str]) -> int:
    """`proof plan`: exit 0 with the step (whatever it decides), 64 when the inputs cannot be read."""
    try:
        args = build_parser().parse_args(list(argv))
    except (argparse.ArgumentError, SystemExit) as exc:
        if isinstance(exc, SystemExit) and exc.code == 0:
            return ExitCode.OK
        print(f"proof: plan: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        doc = _load(args.inputs, "--inputs", None, "") if args.inputs else None
        if doc is not None and not isinstance(doc, Mapping):
            raise PlanError("--inputs must hold a JSON object")
        phases, problems = parse_phases(_load(args.phases, "--phases", doc, "phases") or {})
        state = parse_state(_load(args.state, "--state", doc, "state"))
        settings = parse_settings(_load(args.env_file, "--env-file", doc, "settings", as_text=True) or "")
        purpose = "live" if args.target == "status" else args.purpose
        raw = _load(args.observation, "--observation", doc, "observation")
        obs = None if purpose == "start" else parse_observation(raw, purpose)
    except PlanError as exc:
        print(f"proof: plan: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    ctx = Context(host=args.host, unit=args.unit, env_file=args.env_name or args.env_file or Context.env_file,
                  state_file=args.state_name or args.state or Context.state_file, gate_window_sec=args.gate_window,
                  observe_window_sec=args.observe_window, error_rate_max=args.error_rate_max, cpu_max=args.cpu_max)
    step = plan(phases, state, settings, args.target, obs, force=args.force == "true", ctx=ctx, problems=problems)
    log.info("ramp plan host=%s target=%s action=%s rule=%s", ctx.host, args.target, step.action, step.rule)
    if args.json:
        json.dump(dataclasses.asdict(step), sys.stdout, default=str)
        sys.stdout.write("\n")
    else:
        print(step.message)
    return ExitCode.OK
