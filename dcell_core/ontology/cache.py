"""Where built hierarchies are cached, `<cache_dir>/hierarchies/<fingerprint>.json`, and how a cache file
proves itself.

A cache file is one header line, `{"format": 2, "fingerprint": ..., "sha256": ...}` (the sha256 of the payload
bytes), then the payload: `Hierarchy.to_json()`. Reading checks that the header names the fingerprint the file
is stored under, that the payload has the recorded hash, that it parses into a valid Hierarchy, and that the
Hierarchy carries that fingerprint too; any failure raises CacheFileInvalid saying why.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dcell_core.fileio import atomic_write_bytes
from dcell_core.ontology.hierarchy import Hierarchy

__all__ = ["CACHE_FORMAT", "CacheFileInvalid", "atomic_write_bytes", "hierarchy_cache_path", "read_hierarchy_cache",
           "write_hierarchy_cache"]  # atomic_write_bytes is re-exported for the ontology modules and scripts

CACHE_FORMAT = 2  # 1: the bare payload, no header


class CacheFileInvalid(ValueError):
    """A hierarchy cache file that fails its checks; the message says why, to follow the file's name."""


def hierarchy_cache_path(cache_dir: str | Path, fingerprint: str) -> Path:
    return Path(cache_dir).expanduser() / "hierarchies" / f"{fingerprint}.json"


def write_hierarchy_cache(path: Path, fingerprint: str, hierarchy: Hierarchy) -> None:
    """Write header and payload atomically."""
    if hierarchy.fingerprint != fingerprint:
        raise ValueError(f"hierarchy with fingerprint {hierarchy.fingerprint!r} cannot be cached as {fingerprint!r}")
    payload = hierarchy.to_json().encode()
    header = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "sha256": hashlib.sha256(payload).hexdigest()}
    atomic_write_bytes(path, json.dumps(header, sort_keys=True).encode() + b"\n" + payload)


def read_hierarchy_cache(path: Path, fingerprint: str) -> Hierarchy:
    """The hierarchy cached in `path` under `fingerprint`, or CacheFileInvalid saying what is wrong."""
    data = path.read_bytes()
    head, newline, payload = data.partition(b"\n")
    if not newline:
        raise CacheFileInvalid("has no header line (written by an older version, or truncated)")
    try:
        header = json.loads(head)
    except ValueError:
        raise CacheFileInvalid("has a header line that is not JSON (damaged or an older format)") from None
    if not isinstance(header, dict) or header.get("format") != CACHE_FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise CacheFileInvalid(f"has cache format {found!r}, expected {CACHE_FORMAT}")
    if header.get("fingerprint") != fingerprint:
        raise CacheFileInvalid(f"has a header naming fingerprint {header.get('fingerprint')!r}, but is stored "
                               f"under {fingerprint!r}")
    digest = hashlib.sha256(payload).hexdigest()
    if digest != header.get("sha256"):
        raise CacheFileInvalid(f"has content with sha256 {digest}, not the {header.get('sha256')!r} recorded "
                               f"when it was written (edited or truncated)")
    try:
        hierarchy = Hierarchy.from_json(payload.decode())
    except (ValueError, KeyError, TypeError) as exc:  # JSON, UTF-8 and HierarchyError are ValueErrors
        raise CacheFileInvalid(f"does not parse as a hierarchy ({type(exc).__name__}: {exc})") from None
    if hierarchy.fingerprint != fingerprint:
        raise CacheFileInvalid(f"holds a hierarchy with fingerprint {hierarchy.fingerprint!r}, expected "
                               f"{fingerprint!r}")
    return hierarchy
