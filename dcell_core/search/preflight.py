"""Checks made before a search records anything: the directories it will write to can be written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


class NotWritable(OSError):
    """A directory the search must write to cannot be written; the message names it and why."""


def check_writable(directory: Path, what: str) -> None:
    """Write, sync and remove one small file in `directory`, or, when it does not exist yet, in its nearest existing
    ancestor (where it will be created); nothing is left behind.

    A real write, not os.access: root passes every permission check, but not a read-only or full file system.
    """
    directory = Path(directory).absolute()
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(existing))
        fd, tmp = tempfile.mkstemp(prefix=".dcell-write-check-", dir=existing)
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise NotWritable(f"{what} {directory} is not writable: {e.strerror or e}") from e
