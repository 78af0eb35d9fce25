"""GenotypeDataset: validation, splits, on-disk cache (hit, key changes, atomic writes), config."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from dcell_core.fileio import CacheRebuiltWarning
from dcell_core.genotypes import (
    GenotypeConfig,
    GenotypeDataError,
    GenotypeDataset,
    csr_from_lists,
    load_or_build_dataset,
    split_rows,
    validate_config,
)
from dcell_core.genotypes import cache as cache_mod
from dcell_core.genotypes import dataset as dataset_mod
from dcell_core.ontology.hierarchy import Hierarchy

DATA = Path(__file__).parent / "data" / "genotypes"
SIM = dict(simulator="hierarchy_aligned", num_doubles=60, num_triples=40)


def _toy(drop: str | None = None) -> Hierarchy:
    spec = json.loads((DATA / "toy_hierarchy.json").read_text())
    direct = {t: [g for g in gs if g != drop] for t, gs in spec["direct_genes"].items()}
    return Hierarchy.from_mappings(spec["children"], direct, spec["names"])


@pytest.fixture(scope="module")
def toy() -> Hierarchy:
    return _toy()


def _splits(n: int) -> dict[str, np.ndarray]:
    return {"train": np.arange(n, dtype=np.int64), "val": np.zeros(0, np.int64), "test": np.zeros(0, np.int64)}


# ---- validation --------------------------------------------------------------------------------------------
def _dataset(rows, phenotypes, num_genes=6) -> GenotypeDataset:
    flat, offsets = csr_from_lists(rows)
    return GenotypeDataset(flat, offsets, np.asarray(phenotypes, np.float32), num_genes, ("fitness",),
                           _splits(len(rows)))


def test_dataset_stores_csr_not_a_table():
    ds = _dataset([[0, 2], [1], [3, 4, 5]], [0.5, 0.9, 0.1])
    assert ds.gene_indices.tolist() == [0, 2, 1, 3, 4, 5] and ds.offsets.tolist() == [0, 2, 3, 6]
    assert ds.genotype(2).tolist() == [3, 4, 5] and len(ds) == 3


@pytest.mark.parametrize(
    "rows, phenotypes, message",
    [
        ([[0], [1, 6]], [0.1, 0.2], "row 1 has gene index 6 outside"),
        ([[0], [], [1]], [0.1, 0.2, 0.3], "row 1 has 0 genes"),
        ([[0], [1], [2]], [0.1, float("nan"), 0.3], "row 1 has a non-finite phenotype"),
    ],
)
def test_dataset_validation_names_the_row(rows, phenotypes, message):
    with pytest.raises(GenotypeDataError, match=message):
        _dataset(rows, phenotypes)


def test_dataset_rejects_unsorted_or_repeated_genes():
    offsets = np.array([0, 1, 3], dtype=np.int64)
    for genes in ([0, 3, 2], [0, 2, 2]):
        with pytest.raises(GenotypeDataError, match="row 1 genes must be sorted and distinct"):
            GenotypeDataset(np.array(genes), offsets, np.zeros(2, np.float32), 6, ("f",), _splits(2))


def test_dataset_rejects_overlapping_splits():
    flat, offsets = csr_from_lists([[0], [1], [2]])
    splits = {"train": np.array([0, 1]), "val": np.array([1]), "test": np.array([2])}
    with pytest.raises(GenotypeDataError, match="row 1 appears in 2 splits"):
        GenotypeDataset(flat, offsets, np.zeros(3, np.float32), 6, ("f",), splits)


# ---- splits ------------------------------------------------------------------------------------------------
def test_splits_disjoint_covering_sized_and_seeded():
    flat, offsets = csr_from_lists([[i] for i in range(200)])
    a = split_rows(flat, offsets, 0.1, 0.2, seed=0)
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (140, 20, 40)
    everything = np.concatenate([a["train"], a["val"], a["test"]])
    assert np.array_equal(np.sort(everything), np.arange(200))
    b = split_rows(flat, offsets, 0.1, 0.2, seed=0)
    c = split_rows(flat, offsets, 0.1, 0.2, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])


def test_repeated_genotypes_share_a_split():
    # rows 0, 3, 5 are the same gene set {1, 4}; rows 1 and 4 are {2}
    rows = [[1, 4], [2], [0], [1, 4], [2], [1, 4]] + [[g, 5] for g in range(5)]
    flat, offsets = csr_from_lists(rows)
    for seed in range(20):
        splits = split_rows(flat, offsets, 0.3, 0.3, seed)
        label = {int(r): name for name, rs in splits.items() for r in rs}
        assert label[0] == label[3] == label[5] and label[1] == label[4]


# ---- cache -------------------------------------------------------------------------------------------------
def test_second_load_is_a_cache_hit_without_rebuilding(tmp_path, toy, monkeypatch):
    cfg = GenotypeConfig(**SIM)
    first = load_or_build_dataset(toy, cfg, tmp_path, tmp_path)
    path = Path(first.meta["cache_path"])
    assert first.meta["cache"] == "built" and path.parent == tmp_path / "datasets"
    assert path.name == f"{first.meta['key']}.npz"

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a cached dataset was rebuilt")

    monkeypatch.setattr(dataset_mod, "build_dataset", no_rebuild)
    mtime = path.stat().st_mtime_ns
    second = load_or_build_dataset(toy, cfg, tmp_path, tmp_path)
    assert second.meta["cache"] == "hit" and path.stat().st_mtime_ns == mtime
    for name in ("gene_indices", "offsets", "phenotypes"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    assert all(np.array_equal(first.splits[k], second.splits[k]) for k in first.splits)


def _key(hierarchy, cfg, base_dir) -> str:
    splits = {"val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction, "split_seed": cfg.split_seed}
    return cache_mod.cache_key(hierarchy, dataset_mod.describe_source(cfg, base_dir), splits)


def test_cache_key_changes_with_every_setting(tmp_path, toy):
    base = GenotypeConfig(**SIM)
    changes = [dict(split_seed=1), dict(val_fraction=0.2), dict(num_doubles=61), dict(noise_std=0.04), dict(noise_slope=0.0),
               dict(seed=1), dict(threshold=0.3), dict(related_fraction=0.4)]
    keys = {_key(toy, base, tmp_path)} | {_key(toy, dataclasses.replace(base, **c), tmp_path) for c in changes}
    keys.add(_key(_toy(drop="YHL001C"), base, tmp_path))  # another hierarchy
    assert len(keys) == len(changes) + 2
    assert _key(toy, GenotypeConfig(**SIM), tmp_path) == _key(toy, base, tmp_path)


def test_cache_key_follows_file_content_not_location(tmp_path, toy):
    shutil.copy(DATA / "sga_small.txt", tmp_path / "a.txt")
    cfg = GenotypeConfig(source="sga", path="a.txt")
    key = _key(toy, cfg, tmp_path)
    (tmp_path / "moved").mkdir()
    shutil.copy(tmp_path / "a.txt", tmp_path / "moved" / "b.txt")
    assert _key(toy, dataclasses.replace(cfg, path="moved/b.txt"), tmp_path) == key
    assert _key(toy, dataclasses.replace(cfg, phenotype="epsilon"), tmp_path) != key
    (tmp_path / "a.txt").write_text((tmp_path / "a.txt").read_text().replace("0.7319", "0.7320"))
    assert _key(toy, cfg, tmp_path) != key


def test_crash_during_write_leaves_no_partial_file_and_old_cache_intact(tmp_path, toy, monkeypatch):
    old = load_or_build_dataset(toy, GenotypeConfig(**SIM), tmp_path, tmp_path)
    old_path = Path(old.meta["cache_path"])
    old_bytes = old_path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    new_cfg = GenotypeConfig(split_seed=7, **SIM)
    with pytest.raises(OSError, match="simulated crash"):
        load_or_build_dataset(toy, new_cfg, tmp_path, tmp_path)
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == [old_path.name]  # no temp, no new file
    # a crash while rewriting the same path keeps the old bytes
    with pytest.raises(OSError, match="simulated crash"):
        cache_mod.write_npz_atomic(old_path, {"junk": np.zeros(3)})
    assert old_path.read_bytes() == old_bytes
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == [old_path.name]
    monkeypatch.undo()
    assert load_or_build_dataset(toy, GenotypeConfig(**SIM), tmp_path, tmp_path).meta["cache"] == "hit"


def test_unreadable_cache_file_is_rebuilt_with_a_warning_naming_it(tmp_path, toy):
    cfg = GenotypeConfig(**SIM)
    path = cache_mod.cache_path(tmp_path, _key(toy, cfg, tmp_path))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated")
    with pytest.warns(CacheRebuiltWarning, match=path.name):
        assert load_or_build_dataset(toy, cfg, tmp_path, tmp_path).meta["cache"] == "built"
    assert load_or_build_dataset(toy, cfg, tmp_path, tmp_path).meta["cache"] == "hit"


# ---- file sources through the dataset ---------------------------------------------------------------------
def test_sga_dataset_maps_orfs_to_hierarchy_indices(tmp_path, toy):
    cfg = GenotypeConfig(source="sga", path=str(DATA / "sga_small.txt"), val_fraction=0.0, test_fraction=0.0)
    ds = load_or_build_dataset(toy, cfg, tmp_path / "cache", tmp_path)
    g = toy.gene_index
    expected = [[g["YAL001C"], g["YAL002W"]], [g["YAL002W"], g["YBL001C"]], [g["YDL001W"], g["YDL002C"]],
                [g["YEL001C"], g["YFL003W"]], [g["YFL001W"]]]
    assert [ds.genotype(i).tolist() for i in range(len(ds))] == [sorted(e) for e in expected]
    assert ds.phenotypes.dtype == np.float32
    assert np.allclose(ds.phenotypes, [0.7319, 0.4266, 0.9829, 0.7330, 0.8018])
    assert ds.meta["stats"]["blank_lines"] == 1 and ds.phenotype_names == ("fitness",)


def test_table_dataset_resolves_relative_path_and_drops_unknown_on_request(tmp_path, toy):
    cfg = GenotypeConfig(source="table", path="table_unknown_genes.csv", val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(ValueError, match="genes not in the hierarchy"):
        load_or_build_dataset(toy, cfg, tmp_path, DATA)
    ds = load_or_build_dataset(toy, dataclasses.replace(cfg, drop_unknown=True), tmp_path, DATA)
    assert len(ds) == 2 and ds.meta["stats"]["dropped_unknown"] == 2
    with pytest.raises(FileNotFoundError, match="no_such.csv"):
        load_or_build_dataset(toy, dataclasses.replace(cfg, path="no_such.csv"), tmp_path, DATA)


# ---- config ------------------------------------------------------------------------------------------------
def test_config_is_a_structured_config_and_validates():
    cfg = OmegaConf.structured(GenotypeConfig)
    assert cfg.source == "simulate" and cfg.val_fraction == 0.1
    with pytest.raises(Exception, match="not_a_knob"):
        OmegaConf.merge(cfg, {"not_a_knob": 1})
    with pytest.raises(ValueError, match="source: 'excel' not in"):
        validate_config(GenotypeConfig(source="excel"))
    with pytest.raises(ValueError, match="path: source 'sga' needs a file"):
        GenotypeConfig(source="sga").validate()
    with pytest.raises(ValueError) as info:  # every problem in one message
        validate_config(GenotypeConfig(val_fraction=0.5, test_fraction=0.5, hill=0.0, num_doubles=-1))
    for part in ("val_fraction + test_fraction", "hill: must be > 0, got 0.0", "num_doubles: must be >= 0, got -1"):
        assert part in str(info.value)
    GenotypeConfig().validate()  # the defaults are valid
