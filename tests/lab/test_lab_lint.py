"""The deployment code is lint-clean: yamllint and ansible-lint's production profile, and every playbook parses.

No lab host needed: these run in `make test-unit` as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_labkit import ANSIBLE, ROOT, SHIPPED

pytestmark = pytest.mark.timeout(300)
BIN = Path(sys.executable).parent
PLAYBOOKS = sorted(p.name for p in ANSIBLE.glob("*.yml"))


def run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=280)


def test_yamllint_is_clean() -> None:
    res = run(str(BIN / "yamllint"), "-s", ".")
    assert res.returncode == 0, res.stdout + res.stderr


def test_ansible_lint_production_profile_is_clean() -> None:
    res = run(str(BIN / "ansible-lint"), "--profile", "production", "--nocolor")
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-6000:]
    assert "Profile 'production' was required, and it passed" in res.stdout + res.stderr


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook: str) -> None:
    res = run(str(BIN / "ansible-playbook"), "--syntax-check", playbook, cwd=ANSIBLE)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_role_has_the_standard_layout_and_documents_its_variables() -> None:
    """defaults/main.yml with a comment above every variable, meta/main.yml, and a README naming every variable."""
    import yaml

    roles = sorted(p for p in (ANSIBLE / "roles").iterdir() if p.is_dir())
    assert len(roles) >= 13
    for role in roles:
        assert (role / "meta" / "main.yml").is_file(), role.name
        # quantum_common holds only the defaults other roles derive from
        assert (role / "tasks" / "main.yml").is_file() or role.name == "quantum_common", role.name
        readme = (role / "README.md").read_text()
        defaults_file = role / "defaults" / "main.yml"
        if not defaults_file.exists():
            continue
        defaults = yaml.safe_load(defaults_file.read_text()) or {}
        lines = defaults_file.read_text().splitlines()
        for name in defaults:
            assert name.startswith(role.name + "_"), f"{role.name}: {name} is not prefixed with the role name"
            assert f"`{name}`" in readme, f"{role.name}/README.md does not document {name}"
            idx = next(i for i, line in enumerate(lines) if line.startswith(name + ":"))
            assert lines[idx - 1].startswith("#"), f"{role.name}: {name} has no comment line above it"


def test_molecule_snapshots_what_the_lab_tests_ship() -> None:
    """The molecule scenario deploys a snapshot of the tree, like the lab tests: the schema gate of its pre-flight
    imports harness/, so a path the lab tests ship but the snapshot lacks fails molecule's converge."""
    import yaml

    plays = yaml.safe_load((ROOT / "molecule" / "default" / "create.yml").read_text())
    copies = [t["ansible.builtin.command"]["argv"] for p in plays for t in p.get("tasks", [])
              if t.get("ansible.builtin.command", {}).get("argv", [None])[0] == "cp"]
    assert len(copies) == 1, copies
    assert set(SHIPPED) <= set(copies[0]), f"molecule's snapshot lacks {sorted(set(SHIPPED) - set(copies[0]))}"
