"""The README's demo run: 200k stale + 10k valid + 1k invalid + 1k duplicated intents, exactly as documented."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import ROOT


@pytest.mark.slow
def test_demo_backlog_ends_exactly_as_documented():
    done = subprocess.run([sys.executable, "-m", "scripts.demo"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "results: 10000 for 10000 intent_ids (max per id 1)" in out
    assert "dead letters: 1000" in out and "group: pending=0 lag=0" in out
    assert "'stale': 200000" in out and "'duplicate': 1000" in out
    assert out.strip().endswith("DEMO OK")
