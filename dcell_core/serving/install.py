"""Placing a production checkpoint atomically, keeping the previous one.

`dest` (e.g. checkpoints/production) is a symbolic link to a versioned sibling directory
(`production.dcell-v3`); `dest.prev` links to the one it replaced. A new version is written into a hidden
staging directory, fsynced and renamed to its versioned name; then `dest.prev` is pointed at the old target
and `dest` is switched by renaming a new link over it (one atomic rename). A crash at any point leaves `dest`
on a complete checkpoint: the old one until the switch, the new one after. Staging directories left by a
crash are removed by the next installation, which holds a lock on `.<dest>.lock` (one promotion at a time
per destination). Versioned directories other than the current and the previous one are removed.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from dcell_core.fileio import atomic_directory, fsync_dir

STAGING_MARK = ".tmp-"


class InstallError(RuntimeError):
    """The destination cannot take a checkpoint (e.g. it is a real directory, not a link)."""


@dataclass(frozen=True)
class Installed:
    dest: Path
    target: Path  # the versioned directory dest now links to
    previous: Path | None  # what dest linked to before (kept), None on the first installation
    changed: bool  # False: dest already linked to this version


@contextmanager
def destination_lock(dest: Path) -> Iterator[None]:
    """Exclusive lock for installations into `dest` (blocks while another promotion holds it)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def current_target(dest: Path) -> Path | None:
    """The versioned directory `dest` links to, None when dest does not exist; a real directory is an error."""
    if dest.is_symlink():
        return dest.parent / os.readlink(dest)
    if dest.exists():
        raise InstallError(f"{dest} exists and is not a link made by promotion (a real "
                           f"{'directory' if dest.is_dir() else 'file'}): move it away or choose another --dest")
    return None


def version_dir(dest: Path, label: str) -> Path:
    return dest.parent / f"{dest.name}.{label}"


def install(dest: Path, label: str, write: Callable[[Path], None], reuse: Callable[[Path], bool]) -> Installed:
    """Make `dest` link to the versioned directory `<dest>.<label>`, written by `write(staging_dir)` unless it
    exists and `reuse(existing_dir)` says it holds the right content. Call inside destination_lock(dest)."""
    dest = Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = current_target(dest)
    links_here = old is not None and old.name == f"{dest.name}.{label}"
    _remove_staging(dest)
    target = version_dir(dest, label)
    if target.exists() and not reuse(target):
        if links_here:
            raise InstallError(f"{dest} links to {target}, whose content is not this version's (changed after it "
                               "was installed?); move it away and promote again")
        shutil.rmtree(target)  # an earlier, different content under this label that nothing links to
    wrote = not target.exists()
    if wrote:
        # a production checkpoint is read by others, so the staging directory is not left private
        with atomic_directory(target, prefix=f".{target.name}{STAGING_MARK}", mode=0o755) as staging:
            write(staging)
    if links_here:
        return Installed(dest, target, _prev_target(dest), changed=wrote)
    if old is not None:
        _point(Path(f"{dest}.prev"), old)
    _point(dest, target)
    _prune(dest, keep={target.name, old.name if old is not None else ""})
    return Installed(dest, target, old, changed=True)


def _point(link: Path, target: Path) -> None:
    """Atomically make `link` a relative symbolic link to `target` (a sibling)."""
    tmp = link.parent / f".{link.name}{STAGING_MARK}link-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def _prev_target(dest: Path) -> Path | None:
    prev = Path(f"{dest}.prev")
    return prev.parent / os.readlink(prev) if prev.is_symlink() else None


def _remove_staging(dest: Path) -> None:
    """Leftovers of an interrupted installation into dest (safe: the caller holds dest's lock)."""
    for p in dest.parent.glob(f".{dest.name}*{STAGING_MARK}*"):
        if p.is_symlink() or p.is_file():
            p.unlink()
        else:
            shutil.rmtree(p)


def _prune(dest: Path, keep: set) -> None:
    """Remove versioned directories of dest other than the current and the previous one."""
    pattern = re.compile(re.escape(dest.name) + r"\.[^/]+-v\d+")
    for p in dest.parent.iterdir():
        if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink() and p.name not in keep:
            shutil.rmtree(p)
