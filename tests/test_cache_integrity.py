"""Caches prove themselves: a hierarchy or dataset cache file that was edited, truncated or written in an older
format is rebuilt with a CacheRebuiltWarning naming it, and rewritten valid; atomic directory writes."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from dcell_core.config import compose
from dcell_core.data import load_run_data
from dcell_core.fileio import CacheRebuiltWarning, atomic_directory
from dcell_core.genotypes import cache as dataset_cache
from dcell_core.ontology import Hierarchy
from dcell_core.ontology.cache import CacheFileInvalid, hierarchy_cache_path, read_hierarchy_cache

DATA = "yeast_dna_repair"  # the embedded snapshot's smallest sub-hierarchy (24 terms), simulated genotypes


def run_data(cache: Path):
    return load_run_data(compose([f"data={DATA}", f"cache_dir={cache}"]))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A cache filled by one cold build, and what that build returned."""
    cache = tmp_path_factory.mktemp("pristine")
    fresh = run_data(cache)
    assert fresh.dataset.meta["cache"] == "built"
    return cache, fresh


@pytest.fixture
def cache(pristine, tmp_path):
    """A private copy of the pristine cache to damage."""
    copy = tmp_path / "cache"
    shutil.copytree(pristine[0], copy)
    return copy


def hierarchy_file(cache: Path) -> Path:
    (path,) = (cache / "hierarchies").glob("*.json")
    return path


def dataset_file(cache: Path) -> Path:
    (path,) = (cache / "datasets").glob("*.npz")
    return path


def load_quietly(cache: Path):
    """Load with CacheRebuiltWarning turned into an error: the cache must be used as it is."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheRebuiltWarning)
        return run_data(cache)


def split(path: Path) -> tuple[dict, dict]:
    head, payload = path.read_bytes().split(b"\n", 1)
    return json.loads(head), json.loads(payload)


def write_with_header(path: Path, header: dict, payload: dict, rehash: bool) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    if rehash:
        header = {**header, "sha256": hashlib.sha256(body).hexdigest()}
    path.write_bytes(json.dumps(header).encode() + b"\n" + body)


def dataset_arrays(ds) -> dict:
    """A dataset's content without the per-load meta fields (cache hit/built and the file's path)."""
    arrays = ds.to_arrays()
    meta = json.loads(str(arrays.pop("meta_json")))
    return {**arrays, "meta": {k: v for k, v in meta.items() if k not in ("cache", "cache_path")}}


def assert_same_dataset(a, b) -> None:
    left, right = dataset_arrays(a), dataset_arrays(b)
    assert left.keys() == right.keys()
    for name in left:
        if name == "meta":
            assert left[name] == right[name]
        else:
            assert left[name].dtype == right[name].dtype and np.array_equal(left[name], right[name]), name


# ---- the hierarchy cache ------------------------------------------------------------------------------------
def test_hierarchy_cache_file_records_its_fingerprint_and_hash(pristine, cache):
    _, fresh = pristine
    path = hierarchy_file(cache)
    assert path == hierarchy_cache_path(cache, fresh.hierarchy.fingerprint)
    header, _ = split(path)
    payload = path.read_bytes().split(b"\n", 1)[1]
    assert header == {"format": 2, "fingerprint": path.stem, "sha256": hashlib.sha256(payload).hexdigest()}
    loaded = load_quietly(cache)
    assert loaded.hierarchy.to_json() == fresh.hierarchy.to_json()
    assert loaded.dataset.meta["cache"] == "hit"


def rename_a_gene(path: Path) -> None:
    header, doc = split(path)
    doc["genes"][0] = "YZZ999W"
    Hierarchy.from_json(json.dumps(doc))  # the edit alone would load without complaint
    write_with_header(path, header, doc, rehash=False)


def remove_a_term(path: Path) -> None:
    """Drop a leaf term, handing its genes to its parents: a smaller hierarchy that is still valid."""
    header, doc = split(path)
    h = Hierarchy.from_json(json.dumps(doc))
    leaf = h.terms[0]  # stratum 0, no children
    children = {h.terms[t]: [h.terms[c] for c in kids] for t, kids in enumerate(h.children)}
    direct = {h.terms[t]: {h.genes[g] for g in gs} for t, gs in enumerate(h.direct_genes)}
    for t, kids in children.items():
        if leaf in kids:
            kids.remove(leaf)
            direct[t] |= direct[leaf]
    del children[leaf], direct[leaf]
    smaller = Hierarchy.from_mappings(children, direct, dict(zip(h.terms, h.names)), h.provenance)
    assert smaller.num_terms == h.num_terms - 1
    write_with_header(path, header, json.loads(smaller.to_json()), rehash=False)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def old_format(path: Path) -> None:
    path.write_bytes(path.read_bytes().split(b"\n", 1)[1])  # the bare payload, as format 1 stored it


def other_fingerprint_in_header(path: Path) -> None:
    header, doc = split(path)
    write_with_header(path, {**header, "fingerprint": "0123456789abcdef"}, doc, rehash=False)


def other_fingerprint_in_payload(path: Path) -> None:
    header, doc = split(path)
    doc["provenance"]["fingerprint"] = "0123456789abcdef"
    write_with_header(path, header, doc, rehash=True)  # a consistent hash: only the last check can tell


def not_a_hierarchy(path: Path) -> None:
    header, doc = split(path)
    write_with_header(path, header, {**doc, "direct_genes": [[] for _ in doc["terms"]]}, rehash=True)


@pytest.mark.parametrize("damage, reason", [
    (rename_a_gene, "has content with sha256 .*, not the .* recorded"),
    (remove_a_term, "has content with sha256 .*, not the .* recorded"),
    (truncate, "has content with sha256 .*, not the .* recorded"),
    (old_format, "has no header line"),
    (other_fingerprint_in_header, "has a header naming fingerprint '0123456789abcdef', but is stored under"),
    (other_fingerprint_in_payload, "holds a hierarchy with fingerprint '0123456789abcdef'"),
    (not_a_hierarchy, "does not parse as a hierarchy .*HierarchyError"),
], ids=lambda v: v.__name__ if callable(v) else "")
def test_damaged_hierarchy_cache_is_rebuilt_with_a_warning(pristine, cache, damage, reason):
    _, fresh = pristine
    path = hierarchy_file(cache)
    damage(path)
    with pytest.raises(CacheFileInvalid):  # the damaged file does not pass the checks
        read_hierarchy_cache(path, path.stem)
    with pytest.warns(CacheRebuiltWarning, match=re.escape(f"cache file {path} ") + reason) as record:
        rebuilt = run_data(cache)
    assert len([w for w in record if issubclass(w.category, CacheRebuiltWarning)]) == 1
    assert rebuilt.hierarchy == fresh.hierarchy and rebuilt.hierarchy.to_json() == fresh.hierarchy.to_json()
    assert rebuilt.dataset.meta["cache"] == "hit"  # the rebuilt hierarchy keys the same dataset
    # rewritten valid: it passes the checks and the next load uses it without a warning
    assert read_hierarchy_cache(path, path.stem).to_json() == fresh.hierarchy.to_json()
    assert load_quietly(cache).hierarchy.to_json() == fresh.hierarchy.to_json()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left


def test_truncated_hierarchy_header_is_rebuilt(pristine, cache):
    _, fresh = pristine
    path = hierarchy_file(cache)
    path.write_bytes(path.read_bytes()[:20])  # inside the header line: no newline, no JSON
    with pytest.warns(CacheRebuiltWarning, match=re.escape(str(path))):
        assert run_data(cache).hierarchy.to_json() == fresh.hierarchy.to_json()
    assert load_quietly(cache).hierarchy.to_json() == fresh.hierarchy.to_json()


# ---- the dataset cache --------------------------------------------------------------------------------------
def test_dataset_cache_file_records_a_checksum(pristine, cache):
    _, fresh = pristine
    path = dataset_file(cache)
    with np.load(path, allow_pickle=False) as data:
        stored = {name: data[name] for name in data.files}
    recorded = str(stored.pop(dataset_cache.CHECKSUM))
    assert recorded == dataset_cache.arrays_sha256(stored)
    assert dataset_cache.arrays_sha256({**stored, "phenotypes": stored["phenotypes"] + 1}) != recorded
    loaded = load_quietly(cache)
    assert loaded.dataset.meta["cache"] == "hit"
    assert_same_dataset(loaded.dataset, fresh.dataset)


def resave(path: Path, change) -> None:
    """Rewrite the npz with `change` applied to its arrays (the stored checksum left as it was, unless the
    change removes or replaces it): a well-formed file whose content differs from what was written."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    change(arrays)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def change_a_phenotype(arrays):
    arrays["phenotypes"] = arrays["phenotypes"].copy()
    arrays["phenotypes"][0] += 0.5


def change_a_split(arrays):
    arrays["split_train"], arrays["split_val"] = arrays["split_val"], arrays["split_train"]


def drop_the_checksum(arrays):
    del arrays[dataset_cache.CHECKSUM]


def other_key_with_a_valid_checksum(arrays):
    del arrays[dataset_cache.CHECKSUM]
    meta = json.loads(str(arrays["meta_json"]))
    arrays["meta_json"] = np.array(json.dumps({**meta, "key": "0" * 64}, sort_keys=True))
    arrays[dataset_cache.CHECKSUM] = np.array(dataset_cache.arrays_sha256(arrays))


def truncate_npz(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("damage, reason", [
    (truncate_npz, "cannot be read"),
    (lambda p: resave(p, change_a_phenotype), "has arrays with sha256 .*, not the .* recorded"),
    (lambda p: resave(p, change_a_split), "has arrays with sha256 .*, not the .* recorded"),
    (lambda p: resave(p, drop_the_checksum), "has no content_sha256 array"),
    (lambda p: resave(p, other_key_with_a_valid_checksum), "holds key '0000"),
], ids=["truncated", "phenotype_changed", "split_changed", "no_checksum", "other_key"])
def test_damaged_dataset_cache_is_rebuilt_with_a_warning(pristine, cache, damage, reason):
    _, fresh = pristine
    path = dataset_file(cache)
    damage(path)
    with pytest.warns(CacheRebuiltWarning, match=re.escape(f"cache file {path} ") + reason) as record:
        rebuilt = run_data(cache)
    assert len([w for w in record if issubclass(w.category, CacheRebuiltWarning)]) == 1
    assert rebuilt.dataset.meta["cache"] == "built"
    assert_same_dataset(rebuilt.dataset, fresh.dataset)
    # rewritten valid: it passes the checksum and the next load is a hit without a warning
    assert dataset_cache.read_npz(path).keys() == fresh.dataset.to_arrays().keys()
    again = load_quietly(cache)
    assert again.dataset.meta["cache"] == "hit"
    assert_same_dataset(again.dataset, fresh.dataset)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_read_npz_names_the_file(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(dataset_cache.GenotypeCacheError, match=re.escape(f"dataset cache file {path} cannot be")):
        dataset_cache.read_npz(path)


# ---- atomic directories -------------------------------------------------------------------------------------
def test_atomic_directory_renames_a_complete_tree_into_place(tmp_path):
    final = tmp_path / "out" / "ckpt"
    with atomic_directory(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".ckpt.") and not final.exists()
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.bin").write_bytes(b"abc")
    assert (final / "sub" / "a.bin").read_bytes() == b"abc"
    assert sorted(p.name for p in final.parent.iterdir()) == ["ckpt"]


def test_atomic_directory_failure_leaves_the_old_tree_and_no_temporary(tmp_path):
    final = tmp_path / "ckpt"
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_directory(final, replace=True) as tmp:
            (tmp / "v").write_text("2")
            raise RuntimeError("writer failed")
    assert (final / "v").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    # without replace, an existing non-empty directory is not overwritten
    with pytest.raises(OSError):
        with atomic_directory(final) as tmp:
            (tmp / "v").write_text("3")
    assert (final / "v").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with atomic_directory(final, replace=True, mode=0o755) as tmp:
        (tmp / "v").write_text("4")
    assert (final / "v").read_text() == "4" and (final.stat().st_mode & 0o777) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
