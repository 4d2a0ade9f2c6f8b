"""Bad configuration stops the service at once: exit code 2, one line naming the variable, no traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from consumer.config import Config, ConfigError
from support import ROOT, ServiceProcess

BAD = [
    ("INTENT_MAX_AGE_SEC", "abc"), ("INTENT_MAX_AGE_SEC", "0"), ("INTENT_MAX_AGE_SEC", "-5"),
    ("INTENT_MAX_AGE_SEC", "99999999999"), ("INTENT_MAX_AGE_SEC", "1.5"),
    ("XREADGROUP_COUNT", "ten"), ("XREADGROUP_COUNT", "0"), ("XREADGROUP_COUNT", "100000"),
    ("EXEC_CONCURRENCY", "0"), ("EXEC_CONCURRENCY", "-1"), ("EXEC_CONCURRENCY", "1000"), ("EXEC_CONCURRENCY", "2x"),
    ("PIPELINE_DIAG", "maybe"), ("CLAIM_IDLE_MS", "5"), ("MAX_DELIVERIES", "0"), ("PAPER_LATENCY_MS", "-1"),
    ("PAPER_FAIL_RATE", "2"), ("PAPER_FAIL_RATE", "nan"), ("RATE_LIMIT_MAX", "0"), ("RATE_LIMIT_WINDOW_SEC", "x"),
    ("MAX_PAYLOAD_BYTES", "10"), ("REDIS_URL", "http://localhost"), ("CONSUMER_NAME", "has space"),
    ("SCHEMA_DIR", "/nonexistent"), ("EXECUTOR", "nosuchmodule:Thing"),
]


def run_service(env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("INTENT_MAX_AGE_SEC", "XREADGROUP_COUNT")}
    full.update({"REDIS_URL": "redis://127.0.0.1:1/0", **env})
    return subprocess.run([sys.executable, "-m", "consumer"], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("name, value", BAD)
def test_bad_value_exits_2_with_one_line_naming_it(name, value):
    done = run_service({name: value})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert name in lines[0] and "Traceback" not in done.stderr
    assert "P0.D.5 Config" not in done.stdout + done.stderr


def test_cross_variable_rule():
    with pytest.raises(ConfigError, match="IDEMPOTENCY_TTL_SEC"):
        Config.from_env({"INTENT_MAX_AGE_SEC": "600", "IDEMPOTENCY_TTL_SEC": "600"})


def test_defaults_are_the_conservative_release_values():
    cfg = Config.from_env({})
    assert (cfg.intent_max_age_sec, cfg.xreadgroup_count, cfg.exec_concurrency, cfg.pipeline_diag) == (600, 10, 1,
                                                                                                        False)
    assert cfg.banner() == "P0.D.5 Config: INTENT_MAX_AGE_SEC=600, XREADGROUP_COUNT=10, EXEC_CONCURRENCY=1"


def test_start_prints_exactly_one_config_line_with_effective_values(redis_url):
    svc = ServiceProcess(redis_url, INTENT_MAX_AGE_SEC=300, XREADGROUP_COUNT=30, EXEC_CONCURRENCY=2).start()
    assert svc.stop() == 0
    lines = [line for line in svc.log().splitlines() if "P0.D.5 Config" in line]
    assert lines == ["INFO P0.D.5 Config: INTENT_MAX_AGE_SEC=300, XREADGROUP_COUNT=30, EXEC_CONCURRENCY=2"]
    # a quiet log at the default settings: the config line, then the stop line, nothing else
    assert len(svc.log().strip().splitlines()) == 2, svc.log()


class _Recording(dict):
    """An environment that remembers every variable name asked for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)


def readme_defaults() -> dict[str, str]:
    """``variable -> default`` from the README's variable table (rows naming several split on `` / ``)."""
    text = (ROOT / "README.md").read_text()
    table = text.split("| variable | default | allowed | meaning |", 1)[1].split("\n\n", 1)[0]
    found: dict[str, str] = {}
    for row in table.strip().splitlines()[1:]:
        names, default = (cell.strip() for cell in row.strip("|").split("|")[:2])
        names_list = [n.strip(" `") for n in re.split(r" / |, ", names)]
        defaults = [d.strip(" `") for d in default.split(" / ")]
        if len(defaults) == len(names_list):
            found.update({n: re.sub(r" \(.*\)$", "", d) for n, d in zip(names_list, defaults)})
        else:  # names whose default is described in words (see docs/contract.md)
            found.update({n: "" for n in names_list})
    return found


def test_the_readme_table_lists_every_variable_with_its_true_default():
    documented = readme_defaults()
    env = _Recording()
    defaults = Config.from_env(env)
    assert set(documented) == env.asked, "the README table and Config.from_env must name the same variables"
    for name, text in documented.items():
        if not text or name == "SCHEMA_DIR":
            continue
        assert Config.from_env({name: text, "CONSUMER_NAME": defaults.consumer}) == defaults, (name, text)
    contract = (ROOT / "docs" / "contract.md").read_text()  # where the table sends readers for the names
    for name in (defaults.intent_stream, defaults.result_stream, defaults.dlq_stream, defaults.group):
        assert f"`{name}`" in contract, name


def test_the_deploy_judges_inventory_values_by_the_same_rules_without_starting_the_service():
    """`python -m consumer.config NAME=VALUE ...` is what the pre-flight runs on the control node."""
    def judge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "consumer.config", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=30)

    ok = judge("INTENT_MAX_AGE_SEC=600", "XREADGROUP_COUNT=50", "EXEC_CONCURRENCY=4", "PIPELINE_DIAG=False")
    assert ok.returncode == 0 and ok.stdout.strip() == "settings accepted", ok.stdout + ok.stderr
    bad = judge("XREADGROUP_COUNT=50", "EXEC_CONCURRENCY=65")
    assert bad.returncode == 2 and bad.stdout.strip() == "EXEC_CONCURRENCY=65 is out of range (allowed: 1..64)"
    ttl = judge("INTENT_MAX_AGE_SEC=900", "IDEMPOTENCY_TTL_SEC=600")
    assert ttl.returncode == 2 and ttl.stdout.startswith("IDEMPOTENCY_TTL_SEC=600 must exceed INTENT_MAX_AGE_SEC=900")
