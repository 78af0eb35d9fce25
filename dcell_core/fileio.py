"""File primitives shared by every cache and checkpoint writer: content hashes, atomic writes of files and
directories, and the warning a cache gives when it finds a damaged file and rebuilds it."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator


class CacheRebuiltWarning(UserWarning):
    """A cache file failed its own checks (damaged, edited, truncated or an older format) and was rebuilt."""


def warn_cache_rebuilt(path: str | Path, reason: str) -> None:
    """Say that the cache file `path` is rebuilt, and why."""
    warnings.warn(f"cache file {path} {reason}; rebuilding it", CacheRebuiltWarning, stacklevel=3)


def file_sha256(paths: str | Path | Iterable[str | Path], chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of one file's bytes, or of several files' bytes in the given order."""
    digest = hashlib.sha256()
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(chunk_bytes), b""):
                digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """Persist a directory's entries (a rename inside it), or a file's content: both are fsynced the same way."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """Persist every file and directory under `root`, deepest first, then `root` itself."""
    root = Path(root)
    for p in sorted(root.rglob("*"), key=lambda q: -len(q.parts)):  # files first, then their directories
        fsync_dir(p)
    fsync_dir(root)


@contextmanager
def atomic_directory(final: str | Path, prefix: str | None = None, mode: int | None = None,
                     replace: bool = False) -> Iterator[Path]:
    """Yield a new temporary directory next to `final`; once the block ends, fsync its tree and rename it to
    `final` (then fsync the parent), so readers see no directory or the complete one under that name.

    `prefix` names the temporary directory (default `.<final name>.`); `mode` is applied to it (mkdtemp makes
    it private); `replace=True` removes an existing `final` just before the rename (that removal and the
    rename are two steps). If the block or any step fails, the temporary directory is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix if prefix is not None else f".{final.name}.", dir=final.parent))
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        yield tmp
        fsync_tree(tmp)
        if replace and final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)


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
