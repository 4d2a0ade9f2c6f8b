"""Lab hosts only: keep the bytecode of code imported from zip archives, i.e. Ansible's module payloads.

Every Ansible task runs its module from a fresh zip (AnsiballZ), and zipimport compiles each .py it imports from an
archive without ever writing the bytecode back: every task compiles ansible.module_utils again, about 0.2 s of CPU
of the 0.35 s a small module costs on a lab host. Here a compiled module is kept under the hash of its source (and
the interpreter's bytecode magic and optimisation level), so an unchanged module_utils is compiled once per host.

What runs is exactly what zipimport would have compiled: the same source gives the same code, renamed to the
archive path it is imported from this time (tracebacks name the real file). A cache that cannot be read or written
is ignored and the source compiled as before. Loaded by quantum_lab_pycache.pth in the lab host's site directory;
the control node and real hosts never load it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import sys
import types
import zipimport

CACHE_DIR = "/var/cache/quantum-lab-pycache"

# zipimport's (pathname, source bytes) -> code step (CPython 3.8 and later); None where it has another shape.
_compile_source = getattr(zipimport, "_compile_source", None)


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    """The code object and every nested one (functions, classes) with co_filename set to filename."""
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


# Bytecode differs between interpreter versions and optimisation levels: both are part of every key.
_SALT = importlib.util.MAGIC_NUMBER + bytes([sys.flags.optimize])


def compile_cached(pathname: str, source: bytes) -> types.CodeType:
    """zipimport's compile step, through the cache."""
    path = os.path.join(CACHE_DIR, hashlib.sha256(_SALT + source).hexdigest())
    try:
        with open(path, "rb") as f:
            code = marshal.loads(f.read())
        if isinstance(code, types.CodeType):
            return _renamed(code, pathname)
    except (OSError, EOFError, ValueError, TypeError):
        pass
    assert _compile_source is not None  # installed only where it exists
    code = _compile_source(pathname, source)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(CACHE_DIR, mode=0o700, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(marshal.dumps(code))
        os.replace(tmp, path)  # whole or not at all, whatever other task writes the same key meanwhile
    except OSError:
        try:
            os.unlink(tmp)  # a write cut short (a full disk) leaves nothing behind
        except OSError:
            pass
    return code


def install() -> None:
    """Route zipimport's compile step through the cache (once per interpreter)."""
    if callable(_compile_source) and getattr(zipimport, "_compile_source", None) is _compile_source:
        zipimport._compile_source = compile_cached


install()
