"""On-disk cache of built genotype datasets: `<cache_dir>/datasets/<key>.npz`, written atomically.

The key is a sha256 over everything that decides the dataset's content: the hierarchy (fingerprint and a
digest of its terms, edges, annotations and gene order), the genotype source (file sha256 and reader
settings, or the simulator settings) and the split settings. Any changed setting gives a new file; nothing
is ever overwritten in place, so a crash mid-write leaves the previous cache files untouched.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from dcell_core.fileio import atomic_write_bytes
from dcell_core.ontology.hierarchy import Hierarchy

CACHE_FORMAT = 1  # bump when the stored arrays or their meaning change


class GenotypeCacheError(RuntimeError):
    """A cache file that cannot be read back; the message names the file."""


def hierarchy_digest(hierarchy: Hierarchy) -> dict:
    """Identity of a hierarchy for cache keys: its fingerprint plus a hash of its structure and gene order
    (hand-made hierarchies may carry no fingerprint; gene indices in the cache depend on the gene order)."""
    structure = json.dumps([hierarchy.terms, hierarchy.children, hierarchy.direct_genes, hierarchy.genes],
                           separators=(",", ":"))
    return {"fingerprint": hierarchy.fingerprint, "structure_sha256": hashlib.sha256(structure.encode()).hexdigest()}


def cache_key(hierarchy: Hierarchy, source: Mapping, splits: Mapping) -> str:
    """Hex sha256 over (cache format, hierarchy digest, source description, split settings)."""
    material = {"format": CACHE_FORMAT, "hierarchy": hierarchy_digest(hierarchy), "source": dict(source),
                "splits": dict(splits)}
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    """Where the dataset with this key lives."""
    return Path(cache_dir) / "datasets" / f"{key}.npz"


def write_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as one .npz so that readers see either no file or the complete file."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of a cache file (no pickles); an unreadable file raises GenotypeCacheError naming it."""
    try:  # re-raised with the path and what to do; never replaced by a rebuild behind the caller's back
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise GenotypeCacheError(f"cannot read dataset cache file {path} ({exc}); delete it to rebuild") from exc
