"""The Grafana dashboard of the backlog drain loads: its JSON has the structure Grafana needs, its panels tile the
grid without overlapping, and every query is valid PromQL over metrics that really exist (the service's own, the
ones redis_exporter 1.45 exports, and the recording rules shipped beside it)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from support import ROOT
from test_alert_rules import PROMTOOL, known_metric_names, metric_names, needs_promtool

DASHBOARD = ROOT / "ansible" / "roles" / "quantum_monitoring" / "files" / "dashboards" / "quantum-backlog.json"
PANEL_TYPES = {"stat", "timeseries", "gauge", "bargauge", "table", "text", "heatmap"}
GRID_WIDTH = 24


@pytest.fixture(scope="module")
def dash() -> dict:
    return json.loads(DASHBOARD.read_text())


def targets(dash: dict) -> list[tuple[dict, dict]]:
    return [(p, t) for p in dash["panels"] for t in p["targets"]]


def as_promql(expr: str) -> str:
    """What Grafana sends: its variables replaced by values they can take."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
    return re.sub(r"\$\{?(host|group)\}?", ".*", expr)


def test_top_level_fields(dash: dict) -> None:
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 30
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash["uid"])
    assert dash["title"].strip()
    assert isinstance(dash["panels"], list) and len(dash["panels"]) >= 10
    assert dash.get("id") is None, "an exported id would clash on import; Grafana assigns it"


def test_every_panel_is_complete_with_a_unique_id(dash: dict) -> None:
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), ids
    for p in dash["panels"]:
        assert isinstance(p["id"], int) and p["id"] > 0
        assert p["type"] in PANEL_TYPES, p["type"]
        assert p["title"].strip(), p["id"]
        assert p["datasource"]["type"] == "prometheus"
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("x", "y", "w", "h")), p["title"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= GRID_WIDTH, p["title"]
        assert p["targets"], f"{p['title']}: no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert isinstance(t.get("expr"), str) and t["expr"].strip(), p["title"]


def test_panels_do_not_overlap(dash: dict) -> None:
    boxes = [(p["title"], p["gridPos"]) for p in dash["panels"]]
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or
                     a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, f"{ta!r} overlaps {tb!r}"


def test_variables_used_are_defined(dash: dict) -> None:
    defined = {v["name"] for v in dash["templating"]["list"]}
    used = set()
    for p, t in targets(dash):
        used |= set(re.findall(r"\$\{?([a-z]+)\}?", t["expr"])) - {"__rate_interval"}
        used |= set(re.findall(r"\$\{?([a-z]+)\}?", p["datasource"]["uid"]))
    assert used <= defined, used - defined


def test_every_query_reads_metrics_that_exist(dash: dict) -> None:
    known = known_metric_names()
    for p, t in targets(dash):
        names = metric_names(as_promql(t["expr"]))
        assert names - known == set(), f"{p['title']}: unknown metrics {sorted(names - known)}"
    # the panels: lag (delivery gap), rates, error rate, stale drops, dead letters, per-host consumers
    text = json.dumps(dash)
    for needle in ("quantum:intent_delivery_gap_seconds", "quantum:intent_error_ratio:rate5m", 'outcome=\\"stale\\"',
                   "trade.intent.dlq", "redis_stream_group_consumer_messages_pending", "sum by (host)"):
        assert needle in text, needle


@needs_promtool
def test_every_query_is_valid_promql(dash: dict, tmp_path: Path) -> None:
    """promtool parses each query as a recording rule; a typo anywhere fails with the panel's name."""
    rules = [{"record": f"dashboard:panel_{p['id']}_{t['refId']}", "expr": as_promql(t["expr"])}
             for p, t in targets(dash)]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout
