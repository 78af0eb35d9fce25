"""On-disk cache of built genotype datasets: `<cache_dir>/datasets/<key>.npz`, written atomically.

The key is a sha256 over everything that decides the dataset's content: the hierarchy (fingerprint and a
digest of its terms, edges, annotations and gene order), the genotype source (file sha256 and reader
settings, or the simulator settings) and the split settings. Any changed setting gives a new file.

Each file also holds a sha256 over its arrays (names, dtypes, shapes and bytes), checked on every read; a file
that fails the check is rebuilt and replaced (dataset.load_or_build_dataset). Every write is a temporary file
renamed into place, so a crash mid-write leaves the previous cache files untouched.
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

CACHE_FORMAT = 3  # bump when the stored arrays or their meaning change (2: a checksum over the arrays;
# 3: file sources keyed by a list of file hashes and the screen readers' settings, optional measurements)
CHECKSUM = "content_sha256"  # the array that holds arrays_sha256 of the others


class GenotypeCacheError(RuntimeError):
    """A cache file that cannot be read back or fails a check; the message names the file and says why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"dataset cache file {path} {reason}")
        self.path, self.reason = Path(path), reason


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


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """Hex sha256 over every array's name, dtype, shape and bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode() + b"\n")
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays and their checksum (CHECKSUM) as one .npz so that readers see no file or the complete one."""
    if CHECKSUM in arrays:
        raise ValueError(f"array name {CHECKSUM!r} is reserved for the cache checksum")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{CHECKSUM: np.array(arrays_sha256(arrays))})
    atomic_write_bytes(path, buffer.getvalue())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of a cache file (no pickles), checked against the checksum recorded when it was written.

    A file that cannot be read, has no checksum or does not match it raises GenotypeCacheError naming the
    file and saying why (load_or_build_dataset rebuilds such a file)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        raise GenotypeCacheError(path, f"cannot be read ({type(exc).__name__}: {exc})") from exc
    recorded = arrays.pop(CHECKSUM, None)
    if recorded is None:
        raise GenotypeCacheError(path, f"has no {CHECKSUM} array (an older format)")
    digest = arrays_sha256(arrays)
    if recorded.shape != () or str(recorded) != digest:
        raise GenotypeCacheError(path, f"has arrays with sha256 {digest}, not the {str(recorded)!r} recorded when "
                                       "it was written (edited or damaged)")
    return arrays
