"""Where built hierarchies are cached: `<cache_dir>/hierarchies/<fingerprint>.json`."""
from __future__ import annotations

from pathlib import Path

from dcell_core.fileio import atomic_write_bytes  # noqa: F401  (re-exported for the ontology modules)


def hierarchy_cache_path(cache_dir: str | Path, fingerprint: str) -> Path:
    return Path(cache_dir).expanduser() / "hierarchies" / f"{fingerprint}.json"
