"""File primitives shared by every cache and checkpoint writer: content hashes and atomic writes."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterable


def file_sha256(paths: str | Path | Iterable[str | Path], chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of one file's bytes, or of several files' bytes in the given order."""
    digest = hashlib.sha256()
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(chunk_bytes), b""):
                digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """Persist a rename inside directory `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    The bytes go to a temporary file in the same directory, are fsynced, and replace the target with one
    rename (then the directory is fsynced); a crash at any point leaves the previous file (or none), and a
    failed write removes its temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp creates 0600; cache and snapshot files are shared
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
