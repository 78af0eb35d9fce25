"""One driver per search: a lease in the search's state directory, renewed while the driver runs.

`ray_results/<search>/dcell_search.lease` holds the owner (host, pid, the process's start time) and the time the
lease expires. A driver takes it when no live owner holds it: a lease whose time has passed, or whose process on
this host is gone (a killed driver), is free. Taking and renewing happen under an exclusive lock of the state
directory, so two drivers that start at once cannot both win. The owner renews it every TTL/3 seconds from a
background thread and releases it when it ends. The parent run's `dcell.owner` tag shows the same owner.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

from dcell_core.fileio import atomic_write_bytes

LEASE_FILE = "dcell_search.lease"
TTL_S = float(os.environ.get("DCELL_LEASE_TTL_S", "60"))


class SearchOwned(RuntimeError):
    """Another live driver holds the search."""


@contextmanager
def directory_lock(directory: Path):
    """An exclusive advisory lock on a directory (flock on its descriptor; released when the block ends)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def describe(owner: dict) -> str:
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["expires"]))
    return f"host {owner['host']} pid {owner['pid']} (lease until {until})"


def _alive(owner: dict, now: float) -> bool:
    if owner["expires"] <= now:
        return False
    if owner["host"] != socket.gethostname():
        return True  # a driver on another machine: only its lease's expiry can tell
    try:
        return abs(psutil.Process(owner["pid"]).create_time() - owner["started"]) < 1.0
    except psutil.NoSuchProcess:
        return False


def _read(path: Path) -> dict | None:
    if not path.exists():
        return None
    text = path.read_text()
    try:
        owner = json.loads(text)
        return {k: owner[k] for k in ("host", "pid", "started", "expires")}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SearchOwned(f"the search's lease file {path} is unreadable ({e}: {text[:200]!r}); if no driver runs "
                          "this search, delete it") from e


class Lease:
    """The running driver's hold on one search directory; `owner` is what the parent run's tag shows."""

    def __init__(self, directory: Path, ttl_s: float = TTL_S):
        self.path = Path(directory) / LEASE_FILE
        self.ttl_s = ttl_s
        self.owner: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renew_error: str | None = None

    def acquire(self) -> dict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with directory_lock(self.path.parent):
            now = time.time()
            held = _read(self.path)
            if held is not None and _alive(held, now):
                raise SearchOwned(f"search {self.path.parent.name} is being run by another driver: {describe(held)}; "
                                  "wait for it to end (or stop it) before resuming")
            self.owner = {**_this_process(), "expires": now + self.ttl_s}
            atomic_write_bytes(self.path, json.dumps(self.owner).encode())
        self._thread = threading.Thread(target=self._renew_loop, name="dcell-search-lease", daemon=True)
        self._thread.start()
        return self.owner

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                with directory_lock(self.path.parent):
                    self.owner = {**self.owner, "expires": time.time() + self.ttl_s}
                    atomic_write_bytes(self.path, json.dumps(self.owner).encode())
            except OSError as e:  # a full disk: the lease runs out and another driver may take over; say so at the end
                self.renew_error = f"{type(e).__name__}: {e}"

    def release(self) -> None:
        """Stop renewing and remove the lease file if it is still this driver's; nothing when never acquired."""
        if self.owner is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with directory_lock(self.path.parent):
            held = _read(self.path)
            if held is not None and self.owner is not None and (held["host"], held["pid"]) == (
                    self.owner["host"], self.owner["pid"]):
                self.path.unlink()
