"""Smoke test of the benchmark harness: the smoke size runs end to end and writes a well-formed results file.

No timing assertions: the figures depend on the machine. What must hold is that every figure is measured, named,
divided by the floor it names, and that the machine and versions are recorded.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FLOORS = [f"floor_count_{c}" for c in (10, 50, 500)] + ["floor_fresh_work_count_50"]
RATIOS = ([f"stale_drain_count_{c}" for c in (10, 50, 500)] + ["fresh_exec_c1", "fresh_exec_c4"]
          + [f"io_latency20ms_c{c}" for c in (1, 2, 4, 8)])
# appendonly yes, per appendfsync policy: each with the raw floor and the same figure with appendonly no
AOF = {f"{kind}_aof_{policy}_{suffix}": baseline for policy in ("everysec", "always")
       for kind, suffix, baseline in (("floor", "count_50", "floor_count_50"),
                                      ("stale_drain", "count_50", "stale_drain_count_50"),
                                      ("fresh_exec", "c1", "fresh_exec_c1"))}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_smoke_bench_writes_every_figure(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "figure" in proc.stdout  # the table was printed

    result = json.loads(out.read_text())
    assert result["size"] == "smoke"
    machine = result["machine"]
    assert isinstance(machine["cpu_count"], int) and machine["cpu_count"] >= 1
    for key in ("python", "redis_server", "redis_py", "hiredis"):
        assert isinstance(machine[key], str) and machine[key], key
    disk = machine["redis_dir"]  # where the AOF was written, and whether an fsync there costs anything
    assert isinstance(disk["fstype"], str) and disk["fstype"] != "?", disk
    assert isinstance(disk["memory_backed"], bool) and _number(disk["fdatasync_us"]["median"]), disk
    assert "redis dir " in proc.stdout and "cost of appendfsync always vs everysec" in proc.stdout
    assert not Path(disk["data_dir"]).exists(), "the private Redis's files (the AOF) were left behind"

    figures = result["figures"]
    assert set(FLOORS + RATIOS + list(AOF) + ["peak_rss_max"]) <= set(figures)
    for name in FLOORS:
        assert _number(figures[name]["value"]) and figures[name]["value"] > 0, name
    for name in RATIOS:
        f = figures[name]
        assert _number(f["value"]) and f["value"] > 0, name
        assert _number(f["floor_value"]) and f["floor_value"] > 0, name
        if f["floor"] in figures:  # divided by a measured floor of the same run
            assert f["floor_value"] == figures[f["floor"]]["value"], name
        assert f["ratio"] == pytest.approx(f["value"] / f["floor_value"], rel=1e-2, abs=1e-3), name
        assert _number(f["peak_rss_mb"]) and f["peak_rss_mb"] > 0, name
        assert f["met"] in (True, False, None), name
    for name in ("fresh_exec_c1", "fresh_exec_c4"):
        assert _number(figures[name]["ratio_to_contract_floor"]), name
    for name, baseline in AOF.items():
        f = figures[name]
        assert _number(f["value"]) and f["value"] > 0, name
        assert f["floor_value"] == figures["floor_count_50"]["value"], name
        assert f["ratio"] == pytest.approx(f["value"] / f["floor_value"], rel=1e-2, abs=1e-3), name
        assert f["baseline"] == baseline and f["baseline_value"] == figures[baseline]["value"], name
        assert f["ratio_to_baseline"] == pytest.approx(f["value"] / f["baseline_value"], rel=1e-2, abs=1e-3), name
    for base in ("floor_count_50", "stale_drain_count_50", "fresh_exec_c1"):
        assert _number(result["persistence"][base]["always_over_everysec"]), base
    assert _number(figures["peak_rss_max"]["value"])
    assert isinstance(result["all_targets_met"], bool)
