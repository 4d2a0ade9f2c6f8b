"""The lab hosts' bytecode cache for Ansible's module payloads (ansible/roles/quantum_lab/files/quantum_lab_pycache.py).

Each run is a fresh interpreter that loads the hook the way the lab host's .pth does, then imports a package from a zip
archive, as an AnsiballZ payload does: the first run compiles and fills the cache, a later one from another archive
path compiles nothing and runs the same code, named after the archive it came from this time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

HOOK = Path(__file__).resolve().parents[1] / "ansible/roles/quantum_lab/files/quantum_lab_pycache.py"

MOD = '''
class Order:
    def total(self, qty, price):
        return round(qty * price, 2)

def fail():
    raise RuntimeError("from the zip")
'''

# Runs in the fresh interpreter: load the hook, count the compiles that reach zipimport's own step, import from the zip.
PROBE = r'''
import importlib.util, json, sys, traceback
spec = importlib.util.spec_from_file_location("quantum_lab_pycache", sys.argv[1])
hook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hook)
hook.CACHE_DIR = sys.argv[3]
compiled = []
original = hook._compile_source
hook._compile_source = lambda path, source: compiled.append(path) or original(path, source)
sys.path.insert(0, sys.argv[2])
from pkg import mod
try:
    mod.fail()
except RuntimeError:
    where = traceback.extract_tb(sys.exc_info()[2])[-1].filename
print(json.dumps({"compiled": compiled, "total": mod.Order().total(3, 1.5), "where": where,
                  "method_file": mod.Order.total.__code__.co_filename}))
'''


def archive(path: Path, mod: str = MOD) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pkg/__init__.py", "")
        z.writestr("pkg/mod.py", mod)
    return path


def run(zip_path: Path, cache: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(HOOK), str(zip_path), str(cache)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_second_import_compiles_nothing_and_runs_the_same_code_named_after_its_own_archive(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run(archive(tmp_path / "a.zip"), cache)
    assert [Path(p).name for p in first["compiled"]] == ["__init__.py", "mod.py"]
    assert len(list(cache.iterdir())) == 2
    second_zip = archive(tmp_path / "b.zip")
    second = run(second_zip, cache)
    assert second["compiled"] == []
    assert second["total"] == first["total"] == 4.5
    # Tracebacks and nested code name the archive this run imported from, not the one that filled the cache.
    assert second["where"] == second["method_file"] == f"{second_zip}/pkg/mod.py"


def test_a_changed_source_is_compiled_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run(archive(tmp_path / "a.zip"), cache)
    changed = run(archive(tmp_path / "b.zip", MOD.replace("round(qty * price, 2)", "round(qty * price * 2, 2)")), cache)
    assert [Path(p).name for p in changed["compiled"]] == ["mod.py"]
    assert changed["total"] == 9.0


def test_a_damaged_or_unusable_cache_is_ignored(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run(archive(tmp_path / "a.zip"), cache)
    for entry in cache.iterdir():
        entry.write_bytes(b"\x00not bytecode")
    repaired = run(archive(tmp_path / "b.zip"), cache)
    assert len(repaired["compiled"]) == 2 and repaired["total"] == 4.5
    assert run(archive(tmp_path / "c.zip"), cache)["compiled"] == []  # the damaged entries were replaced
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    assert run(archive(tmp_path / "d.zip"), blocked)["total"] == 4.5
