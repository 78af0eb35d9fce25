"""Atomic file writes and the on-disk cache of built hierarchies, keyed by fingerprint."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    The bytes go to a temporary file in the same directory, are fsynced, and replace the target with one
    rename; a crash at any point leaves the previous file (or none) and at most a stray temp file.
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


def hierarchy_cache_path(cache_dir: str | Path, fingerprint: str) -> Path:
    return Path(cache_dir).expanduser() / "hierarchies" / f"{fingerprint}.json"
