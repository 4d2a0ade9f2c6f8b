"""The ramp's decisions (consumer/proof/plan.py) rule by rule, in milliseconds: the phase table, where the ramp
stands, refusals, the gate, and each step-back rule of the rollout plan. The lab test (tests/test_proof_ramp_lab.py)
only proves that the role wires these decisions up on a host.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.proof import cli
from consumer.proof.plan import (
    Context, Observation, RampState, Settings, parse_observation, parse_phases, parse_settings, parse_state, plan,
)

ROOT = Path(__file__).resolve().parent.parent
TABLE = yaml.safe_load((ROOT / "ansible" / "vars" / "ramp_phases.yml").read_text())["quantum_ramp_phases"]
PHASES, PROBLEMS = parse_phases(TABLE)
CTX = Context(host="qx1", observe_window_sec=10, gate_window_sec=8)


def at(phase: int) -> tuple[RampState, Settings]:
    """A host a previous ramp left healthy at `phase` with the table's values in force."""
    row = PHASES[phase]
    return RampState(phase=phase, status="healthy"), Settings(row.xreadgroup_count, row.exec_concurrency)


def obs(purpose: str, decision: str, fired: tuple[str, ...] = (), unreadable: tuple[str, ...] = ()) -> Observation:
    summary = f"{decision.upper()}: backlog 0→40 (slope +3.00/s); error rate 12.00% (12/100)"
    return Observation(purpose, decision, fired, unreadable, summary,
                       {"summary": summary, "decision": decision, "fired": list(fired)})


def observed(current: int, target: int, decision: str, *fired: str, force: bool = False) -> Any:
    """The step after phase `target` was applied from `current` and observed."""
    state, settings = at(current)
    return plan(PHASES, state, settings, target, obs("observe", decision, fired), force=force, ctx=CTX)


def test_the_shipped_table_is_valid() -> None:
    assert PROBLEMS == [] and sorted(PHASES) == [1, 2, 3, 4, 5]
    assert (PHASES[4].xreadgroup_count, PHASES[4].exec_concurrency) == (30, 2)


@pytest.mark.parametrize("table, problem", [
    ({1: {"xreadgroup_count": 2000, "exec_concurrency": 1}}, "XREADGROUP_COUNT=2000 is out of range (allowed: 1..1000)"),
    ({1: {"xreadgroup_count": 10, "exec_concurrency": 65}}, "EXEC_CONCURRENCY=65 is out of range (allowed: 1..64)"),
    ({1: {"xreadgroup_count": 0, "exec_concurrency": 1}}, "XREADGROUP_COUNT=0 is out of range"),
    ({1: {"xreadgroup_count": "10", "exec_concurrency": 1}}, "XREADGROUP_COUNT='10' is not an integer"),
    ({1: {"exec_concurrency": 1}}, "XREADGROUP_COUNT=None is not an integer"),
    ({1: {"xreadgroup_count": 10, "exec_concurrency": 1}, 3: {"xreadgroup_count": 20, "exec_concurrency": 1}},
     "numbered 1..2 without gaps"),
    ({1: {"xreadgroup_count": 20, "exec_concurrency": 1}, 2: {"xreadgroup_count": 10, "exec_concurrency": 1}},
     "xreadgroup_count goes down from phase 1 to phase 2"),
    ({1: {"xreadgroup_count": 10, "exec_concurrency": 2}, 2: {"xreadgroup_count": 10, "exec_concurrency": 1}},
     "exec_concurrency goes down from phase 1 to phase 2"),
    ({}, "must map phases 1..N"),
])
def test_a_bad_table_is_refused_with_the_services_own_ranges(table: dict[Any, Any], problem: str) -> None:
    phases, problems = parse_phases(table)
    assert any(problem in p for p in problems), problems
    step = plan(phases, RampState(), Settings(10, 1), 1, ctx=CTX, problems=problems)
    assert (step.action, step.rule, step.fail) == ("refuse", "table", True) and problem in step.message


def test_the_table_keys_may_be_json_strings() -> None:
    phases, problems = parse_phases(json.loads(json.dumps(TABLE)))
    assert problems == [] and phases == PHASES


def test_current_phase_comes_from_the_state_else_the_matching_row_else_0() -> None:
    assert plan(PHASES, RampState(phase=4), Settings(10, 1), 4, ctx=CTX).current == 4
    assert plan(PHASES, RampState(), Settings(30, 1), 3, ctx=CTX).current == 3
    assert plan(PHASES, RampState(), Settings(31, 1), 1, ctx=CTX).current == 0


def test_settings_and_state_are_read_from_their_files() -> None:
    assert parse_settings("A=1\nXREADGROUP_COUNT='30'\nEXEC_CONCURRENCY=2\n# EXEC_CONCURRENCY=9\n") == Settings(30, 2)
    assert parse_settings("") == Settings(None, None)
    assert parse_state({}) == RampState() and parse_state(None) == RampState()
    state = parse_state({"phase": 3, "status": "healthy", "measurements": {"summary": "HEALTHY: x"}})
    assert (state.phase, state.summary) == (3, "HEALTHY: x")


def test_unknown_phase_is_refused() -> None:
    state, settings = at(2)
    for target in (7, "0", "three", "-1"):
        step = plan(PHASES, state, settings, target, ctx=CTX)
        assert (step.action, step.rule, step.fail) == ("refuse", "unknown_phase", True)
        assert step.message == f"phase={target} is not a phase of vars/ramp_phases.yml (1, 2, 3, 4, 5) nor 'status'"


def test_the_applied_phase_is_kept_without_a_restart() -> None:
    step = plan(PHASES, *at(1), 1, ctx=CTX)
    assert (step.action, step.fail) == ("keep", False)
    assert step.message == ("Phase 1 is already applied on qx1 (XREADGROUP_COUNT=10, EXEC_CONCURRENCY=1): "
                            "nothing changed, nothing restarted")


def test_no_skipping_a_phase_without_force() -> None:
    step = plan(PHASES, *at(2), 4, ctx=CTX)
    assert (step.action, step.rule, step.fail) == ("refuse", "skip", True)
    assert step.message.startswith(
        "REFUSED on qx1: the ramp is at phase 2 and moves one phase at a time; phase 4 skips 1 phase(s). "
        "Apply phase 3 first")
    forced = plan(PHASES, *at(2), 4, force=True, ctx=CTX)
    assert (forced.action, forced.target, forced.fail) == ("gate", 4, False)


def test_more_load_needs_the_gate_and_less_load_does_not() -> None:
    up = plan(PHASES, *at(2), 3, ctx=CTX)
    assert (up.action, up.rule, up.from_count, up.to_count) == ("gate", "more_load", 20, 30)
    down = plan(PHASES, *at(5), 2, ctx=CTX)
    assert (down.action, down.status, down.xreadgroup_count, down.exec_concurrency) == ("apply", "observing", 20, 1)
    assert down.record == "applied phase 2 (from phase 5)" and down.gate == "not needed (less load than now)"
    # a gate observation does not change a step that needs none
    assert plan(PHASES, *at(5), 2, obs("gate", "unhealthy", ("cpu_high",)), ctx=CTX).action == "apply"


def test_restoring_the_current_phase_after_a_step_back_is_more_load() -> None:
    step = plan(PHASES, RampState(phase=3, status="stepped_back"), Settings(20, 1), 3, ctx=CTX)
    assert (step.action, step.current, step.target) == ("gate", 3, 3)


def test_a_healthy_gate_applies_and_says_what_a_dry_run_would_do() -> None:
    step = plan(PHASES, *at(2), 3, obs("gate", "healthy"), ctx=CTX)
    assert (step.action, step.fail, step.xreadgroup_count, step.exec_concurrency) == ("apply", False, 30, 1)
    assert step.measured.startswith("gate of phase 2 on qx1: HEALTHY")
    assert step.gate.startswith("HEALTHY") and step.measurements["decision"] == "healthy"
    assert step.would.startswith("would set XREADGROUP_COUNT 20 -> 30, EXEC_CONCURRENCY 1 -> 1 in ")


def test_an_unhealthy_gate_refuses_and_an_unreadable_one_holds() -> None:
    refused = plan(PHASES, *at(2), 3, obs("gate", "unhealthy", ("error_rate_high",)), ctx=CTX)
    assert (refused.action, refused.fail, refused.would) == ("refuse", True, "would refuse/hold (gate unhealthy)")
    assert refused.message.startswith("REFUSED on qx1: phase 2 was not healthy over the last 8 s (error_rate_high); "
                                      "nothing changed. Measured: UNHEALTHY")
    held = plan(PHASES, *at(3), 4, obs("gate", "hold", unreadable=("lag_increasing", "cpu_high")), ctx=CTX)
    assert (held.action, held.rule, held.fail) == ("hold", "unreadable", True)
    assert held.message.startswith("HOLD on qx1: cannot judge phase 3 because the metrics of lag_increasing, "
                                   "cpu_high could not be read; nothing changed (no decision).")


def test_healthy_observation_keeps_the_phase() -> None:
    step = observed(2, 3, "healthy")
    assert (step.action, step.status, step.fail, step.phase, step.xreadgroup_count) == ("keep", "healthy", False, 3, 30)
    assert step.message.startswith("PHASE 3 APPLIED AND HEALTHY on qx1: XREADGROUP_COUNT 20 -> 30, EXEC_CONCURRENCY "
                                   "1 -> 1. Measured: HEALTHY")
    assert step.record == "phase 3 healthy over 10 s" and step.measured.startswith("observe of phase 3 on qx1")


def test_unreadable_metrics_hold_without_rolling_back() -> None:
    step = plan(PHASES, *at(2), 3, obs("observe", "hold", unreadable=("cpu_high",)), ctx=CTX)
    assert (step.action, step.status, step.fail) == ("hold", "hold", True)
    assert (step.phase, step.xreadgroup_count, step.exec_concurrency) == (3, 30, 1)  # the applied values stay
    assert "could not be judged (cpu_high unreadable); no step back" in step.message


def test_lag_increasing_steps_count_one_rung_down() -> None:
    step = observed(2, 3, "unhealthy", "lag_increasing")
    assert (step.action, step.rule, step.status) == ("step_back", "lag_increasing", "stepped_back")
    assert (step.phase, step.xreadgroup_count, step.exec_concurrency) == (3, 20, 1)
    assert step.message.startswith("STEPPED BACK on qx1: phase 3 broke lag_increasing within 10 s. Measured: ")
    assert ("Done: lag increasing -> XREADGROUP_COUNT one rung down: XREADGROUP_COUNT 30 -> 20, "
            "EXEC_CONCURRENCY 1 -> 1, restarted quantum-execution, recorded phase 3 in ") in step.message
    # the rung is the next distinct count of the table, not the previous phase (phase 4 repeats phase 3's count)
    assert observed(3, 4, "unhealthy", "lag_increasing").xreadgroup_count == 20


def test_cpu_above_the_limit_steps_concurrency_one_rung_down() -> None:
    step = observed(3, 4, "unhealthy", "cpu_high")
    assert (step.action, step.phase, step.xreadgroup_count, step.exec_concurrency) == ("step_back", 4, 30, 1)
    assert "CPU above 80 % -> EXEC_CONCURRENCY one rung down: XREADGROUP_COUNT 30 -> 30, EXEC_CONCURRENCY 2 -> 1" \
        in step.message


def test_lag_and_cpu_together_step_both_down() -> None:
    step = observed(4, 5, "unhealthy", "lag_increasing", "cpu_high")
    assert (step.rule, step.xreadgroup_count, step.exec_concurrency) == ("lag_increasing+cpu_high", 30, 2)
    assert "lag increasing -> XREADGROUP_COUNT one rung down and CPU above 80 % -> EXEC_CONCURRENCY" in step.message


def test_error_rate_above_5_percent_returns_to_the_previous_phase() -> None:
    step = observed(2, 3, "unhealthy", "error_rate_high")
    assert (step.action, step.rule, step.phase, step.xreadgroup_count, step.exec_concurrency) == (
        "step_back", "error_rate_high", 2, 20, 1)
    assert "Done: error rate above 5.0 % -> previous phase: XREADGROUP_COUNT 30 -> 20" in step.message
    assert step.record == "stepped back from phase 3: error rate above 5.0 % -> previous phase"
    # errors win over the rung rules: the whole phase goes back
    assert observed(3, 4, "unhealthy", "error_rate_high", "cpu_high", "lag_increasing").phase == 3


def test_unhealthy_otherwise_returns_to_the_previous_phase() -> None:
    step = observed(4, 5, "unhealthy", "unhealthy")
    assert (step.action, step.phase, step.xreadgroup_count, step.exec_concurrency) == ("step_back", 4, 30, 2)
    assert "pipeline unhealthy -> previous phase" in step.message


def test_a_forced_jump_steps_back_to_where_it_came_from() -> None:
    step = observed(1, 4, "unhealthy", "error_rate_high", force=True)
    assert (step.phase, step.xreadgroup_count, step.exec_concurrency) == (1, 10, 1)
    # a step down that fails goes to the phase below the target, never up
    assert observed(5, 2, "unhealthy", "error_rate_high").phase == 1


def test_nothing_lower_leaves_it_at_the_floor() -> None:
    for fired in (("lag_increasing",), ("cpu_high",), ("error_rate_high",)):
        step = observed(1, 1, "unhealthy", *fired)
        assert (step.action, step.status, step.fail) == ("floor", "unhealthy_at_floor", True), fired
        assert (step.xreadgroup_count, step.exec_concurrency) == (10, 1)
        assert step.message.startswith("UNHEALTHY AT THE LOWEST SETTINGS on qx1: phase 1 broke")
        assert step.message.endswith("Nothing lower to step back to: left as is; investigate.")


def test_a_proof_that_cannot_run_is_unreadable_and_holds() -> None:
    failed = parse_observation({"rc": 2, "stdout": "", "stderr": "proof: Redis unreachable at redis://x"}, "observe")
    assert (failed.decision, failed.unreadable) == ("hold", ("proof",))
    assert failed.summary == "HOLD: the proof could not run (rc 2): proof: Redis unreachable at redis://x"
    step = plan(PHASES, *at(2), 3, failed, ctx=CTX)
    assert (step.action, step.xreadgroup_count) == ("hold", 30) and "(proof unreadable)" in step.message
    timed_out = parse_observation({"rc": None, "stdout": "", "msg": "async task did not complete"}, "gate")
    assert timed_out.summary.startswith("HOLD: the proof could not run (rc ?): async task did not complete")
    garbage = parse_observation({"rc": 0, "stdout": "Traceback ..."}, "gate")
    assert garbage.decision == "hold"
    real = parse_observation({"rc": 1, "stdout": json.dumps({"decision": "unhealthy", "fired": ["cpu_high"],
                                                             "unreadable": [], "summary": "UNHEALTHY: x",
                                                             "points": [{"t": 1}] * 1000})}, "observe")
    assert (real.decision, real.fired) == ("unhealthy", ("cpu_high",)) and "points" not in real.measurements


LIVE = {"group": {"lag": 3, "pending": 1}, "movement": {"results_per_sec": 4.5},
        "error_rate": {"value": 0.0123, "basis": "window"},
        "systemd": {"units": {"quantum-execution": {"cpu": {"percent": 12.5, "source": "cgroup"}}}},
        "health": {"verdict": "HEALTHY", "reasons": []}}


def test_status_lines() -> None:
    live = parse_observation({"rc": 0, "stdout": json.dumps(LIVE)}, "live")
    step = plan(PHASES, RampState(), Settings(10, 1), "status", live, ctx=CTX)
    assert step.action == "status" and not step.fail
    assert step.lines[0] == "phase 1 of 5 on qx1 (no ramp state: phase inferred from the settings file)"
    assert "XREADGROUP_COUNT=10, EXEC_CONCURRENCY=1" in step.lines[1]
    assert step.lines[2] == "table: 1/10/1 · 2/20/1 · 3/30/1 · 4/30/2 · 5/50/4 (phase/COUNT/CONCURRENCY)"
    # the lab test reads this line with the same pattern
    assert re.search(r"live: lag \d+, pending \d+, results \+[\d.]+/s, error rate .* CPU [\d.]+ % "
                     r"\((cgroup|proc|systemd)\)", step.lines[4]), step.lines[4]
    state = RampState(phase=3, status="healthy", updated_at="2026-01-01T00:00:00Z", action="phase 3 healthy",
                      summary="HEALTHY: y")
    down = parse_observation({"rc": 2, "stdout": "", "stderr": "proof: Redis unreachable"}, "live")
    lines = plan(PHASES, state, Settings(30, 1), "status", down, ctx=CTX).lines
    assert lines[0] == "phase 3 of 5 on qx1 (status healthy, updated 2026-01-01T00:00:00Z)"
    assert lines[3] == "last decision: phase 3 healthy; HEALTHY: y"
    assert lines[4] == "live: proof unavailable: the proof could not run (rc 2): proof: Redis unreachable"


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, *args: str
            ) -> tuple[int, Any]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(["plan", *args])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip().startswith("{") else out.out + out.err)


def test_cli_reads_what_the_role_sends_on_stdin(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    doc = {"phases": TABLE, "state": {"phase": 2, "status": "healthy"},
           "settings": "XREADGROUP_COUNT=20\nEXEC_CONCURRENCY=1\n",
           "observation": {"rc": 1, "stdout": json.dumps({"decision": "unhealthy", "fired": ["error_rate_high"],
                                                          "unreadable": [], "summary": "UNHEALTHY: e"}),
                           "stderr": "", "msg": ""}}
    code, step = run_cli(monkeypatch, capsys, json.dumps(doc), "--json", "--inputs", "-", "--target", "3",
                         "--force", "false", "--purpose", "observe", "--host", "qx9", "--error-rate-max", "0.05")
    assert code == 0 and (step["action"], step["phase"], step["xreadgroup_count"]) == ("step_back", 2, 20)
    assert "STEPPED BACK on qx9: phase 3 broke error_rate_high" in step["message"]
    code, step = run_cli(monkeypatch, capsys, json.dumps(dict(doc, observation=None)), "--json", "--inputs", "-",
                         "--target", "3", "--purpose", "start")
    assert code == 0 and step["action"] == "gate"
    code, text = run_cli(monkeypatch, capsys, "", "--json", "--target", "3", "--purpose", "sideways")
    assert code == 64 and "sideways" in text


def test_cli_reads_files(tmp_path: Path) -> None:
    (tmp_path / "phases.json").write_text(json.dumps(TABLE))
    (tmp_path / "env").write_text("XREADGROUP_COUNT=10\nEXEC_CONCURRENCY=1\n")
    res = subprocess.run([sys.executable, "-m", "consumer.proof", "plan", "--target", "3", "--phases",
                          str(tmp_path / "phases.json"), "--env-file", str(tmp_path / "env"), "--state",
                          str(tmp_path / "missing.json"), "--host", "qx2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("REFUSED on qx2: the ramp is at phase 1 and moves one phase at a time; phase 3")


def test_no_jinja_expression_in_the_role_decides_anything() -> None:
    tasks = ROOT / "ansible" / "roles" / "quantum_ramp" / "tasks"
    inline_ifs = {p.name: p.read_text().count("if ") for p in tasks.glob("*.yml")}
    assert sum(inline_ifs.values()) == 0, inline_ifs
