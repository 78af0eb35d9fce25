"""The stratum-parallel model's C++ loops (csrc/stratum_ops.cpp), compiled on first use and cached.

`ops()` returns the compiled module. It is built with torch's extension builder (`torch.utils.cpp_extension`:
the system's C++ compiler and ninja) into a library named by a hash of the source, the torch build, the Python
version and the flags, so a changed source or another torch never loads a stale library; once built it is
imported directly, without running the builder. `scripts/setup.sh` builds it at install time; a machine that
did not run it builds it on the first model it creates (about 40 s; the library is moved into place in one
rename, so concurrent processes never read a partial one).

Folder: `$DCELL_EXTENSIONS_DIR`, else `~/.cache/dcell/extensions`.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).parent / "csrc" / "stratum_ops.cpp"
CFLAGS = ("-O3",)
_lock = threading.Lock()
_module: ModuleType | None = None


def build_dir() -> Path:
    root = os.environ.get("DCELL_EXTENSIONS_DIR") or Path.home() / ".cache" / "dcell" / "extensions"
    return Path(root)


def module_name() -> str:
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), sys.version.encode(), " ".join(CFLAGS).encode()):
        key.update(part)
        key.update(b"\0")
    return f"dcell_stratum_ops_{key.hexdigest()[:16]}"


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path, loader=importlib.machinery.ExtensionFileLoader(
        name, str(path)))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ops() -> ModuleType:
    """The compiled stratum ops, built first if this source has not been built here yet."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            name = module_name()
            library = build_dir() / f"{name}.so"
            if not library.is_file():
                _build(name, library)
            _module = _import(name, library)
    return _module


def _build(name: str, library: Path) -> None:
    """Compile the source into a private folder beside `library` in a child process (torch's builder imports
    what it built; this process imports the library once, from its final place), then move the library into
    place with one rename: a reader sees the whole library or none, and concurrent builders each build and the
    last rename wins (the same content)."""
    work = library.parent / f"{name}.build-{os.getpid()}-{threading.get_ident()}"
    work.mkdir(parents=True, exist_ok=True)
    code = ("import sys, torch; from torch.utils.cpp_extension import load; "
            "load(sys.argv[1], [sys.argv[2]], extra_cflags=sys.argv[4:], build_directory=sys.argv[3])")
    try:
        run = subprocess.run([sys.executable, "-c", code, name, str(SOURCE), str(work), *CFLAGS],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"building the model's C++ ops from {SOURCE} in {work} failed (a C++ compiler and "
                               f"ninja are needed; scripts/setup.sh installs them):\n{run.stdout[-4000:]}"
                               f"{run.stderr[-4000:]}")
        os.replace(work / f"{name}.so", library)
    finally:
        shutil.rmtree(work)
