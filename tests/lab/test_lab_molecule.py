"""The molecule scenario (molecule/default): create a lab host, converge with deploy.yml, idempotence, verify, destroy.

molecule's own steps carry the assertions (molecule/default/verify.yml); this test runs the scenario the way CI
does and checks that every step ran and passed, and that destroy left nothing of the scenario's host behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_labkit import ROOT, STATUS_SCRIPT

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(1200)]
BIN = Path(sys.executable).parent


def test_molecule_scenario_passes() -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0"}
    res = subprocess.run([str(BIN / "molecule"), "test", "-s", "default"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1150)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-8000:]
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert f"{step}: Executed: Successful" in out, f"step {step} did not pass:\n{out[-4000:]}"
    traces = subprocess.run(["bash", str(STATUS_SCRIPT), "qmol1", "qmol1", "vq-qmol1", "/var/lib/quantum-lab/hosts/qmol1"],
                            capture_output=True, text=True, check=True).stdout
    assert '"nspawn_pid": null, "netns": false' in traces and '"dir": false' in traces, traces
