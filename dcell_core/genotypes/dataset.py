"""GenotypeDataset: CSR genotypes over a hierarchy's genes, float32 phenotypes and seeded splits, cached.

`load_or_build_dataset(hierarchy, cfg, cache_dir, base_dir)` is the entry point: it describes the source,
derives the cache key (cache.py), loads `<cache_dir>/datasets/<key>.npz` when present and otherwise reads
or simulates the genotypes, splits them and writes the cache atomically.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from dcell_core.fileio import file_sha256, warn_cache_rebuilt
from dcell_core.ontology.build import resolve_path as resolve_config_path
from dcell_core.ontology.hierarchy import Hierarchy

from . import cache
from .config import GenotypeConfig, validate_config
from .csr import GenotypeDataError, row_of_entries, validate_csr
from .readers import GenotypeTable, read_sga, read_table, sga_phenotype_column
from .simulate import simulate_genotypes, simulation_settings
from .splits import SPLIT_NAMES, split_rows, validate_splits


@dataclass(frozen=True, eq=False)
class GenotypeDataset:
    gene_indices: np.ndarray  # int64 [nnz]: genes of genotype i are gene_indices[offsets[i]:offsets[i + 1]]
    offsets: np.ndarray  # int64 [N + 1]
    phenotypes: np.ndarray  # float32 [N] or [N, k]
    num_genes: int  # width of the dense batch = hierarchy.num_genes
    phenotype_names: tuple[str, ...]  # one name per phenotype column
    splits: Mapping[str, np.ndarray]  # "train" / "val" / "test" -> sorted int64 row indices
    meta: Mapping = dataclasses.field(default_factory=dict)  # cache key, source, reader / simulator stats

    def __post_init__(self) -> None:
        validate_csr(self.gene_indices, self.offsets, self.num_genes)
        n_rows = len(self.offsets) - 1
        if self.phenotypes.dtype != np.float32 or self.phenotypes.ndim not in (1, 2):
            raise GenotypeDataError(f"phenotypes must be float32 [N] or [N, k], got {self.phenotypes.dtype} "
                                    f"{self.phenotypes.shape}")
        if len(self.phenotypes) != n_rows:
            raise GenotypeDataError(f"{len(self.phenotypes)} phenotype rows for {n_rows} genotypes")
        width = 1 if self.phenotypes.ndim == 1 else self.phenotypes.shape[1]
        if len(self.phenotype_names) != width:
            raise GenotypeDataError(f"{len(self.phenotype_names)} phenotype names for {width} phenotype columns")
        finite = np.isfinite(self.phenotypes).reshape(n_rows, -1).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            raise GenotypeDataError(f"genotype row {row} has a non-finite phenotype {self.phenotypes[row]}")
        validate_splits(dict(self.splits), n_rows)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def genotype(self, row: int) -> np.ndarray:
        """Gene indices disrupted in one genotype, int64 [k]."""
        return self.gene_indices[self.offsets[row]:self.offsets[row + 1]]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for the .npz cache; meta travels as a JSON string."""
        out = {"gene_indices": self.gene_indices, "offsets": self.offsets, "phenotypes": self.phenotypes,
               "num_genes": np.array(self.num_genes, dtype=np.int64),
               "phenotype_names": np.array(self.phenotype_names, dtype=str),
               "meta_json": np.array(json.dumps(dict(self.meta), sort_keys=True))}
        out.update({f"split_{name}": self.splits[name] for name in SPLIT_NAMES})
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "GenotypeDataset":
        """Inverse of to_arrays (validated again on construction)."""
        return cls(
            gene_indices=arrays["gene_indices"], offsets=arrays["offsets"], phenotypes=arrays["phenotypes"],
            num_genes=int(arrays["num_genes"]), phenotype_names=tuple(arrays["phenotype_names"].tolist()),
            splits={name: arrays[f"split_{name}"] for name in SPLIT_NAMES},
            meta=json.loads(str(arrays["meta_json"])),
        )


def describe_source(cfg: GenotypeConfig, base_dir: str | Path | None) -> dict:
    """What determines the genotypes (enters the cache key): simulator settings, or the file's sha256 plus
    the reader settings. The path is left out, so a moved, unchanged file keeps its key (meta records it)."""
    if cfg.source == "simulate":
        return {"kind": "simulate", "phenotype": cfg.phenotype, **simulation_settings(cfg)}
    path = resolve_path(cfg.path, base_dir)
    spec = {"kind": cfg.source, "file_sha256": file_sha256(path), "phenotype": cfg.phenotype,
            "drop_unknown": cfg.drop_unknown, "drop_missing": cfg.drop_missing}
    if cfg.source == "table":
        spec.update(genes_column=cfg.genes_column, gene_separator=cfg.gene_separator)
    return spec


def resolve_path(path: str | None, base_dir: str | Path | None) -> Path:
    """Path of a configured genotype file, resolved like the ontology's files; it must exist."""
    if not path:
        raise ValueError("genotype source needs a file path, got none")
    resolved = resolve_config_path(path, base_dir)
    if not resolved.is_file():
        raise FileNotFoundError(f"genotype file not found: {resolved} (path={path!r}, base_dir={base_dir})")
    return resolved


def build_dataset(hierarchy: Hierarchy, cfg: GenotypeConfig, base_dir: str | Path | None, key: str = "",
                  source: Mapping | None = None) -> GenotypeDataset:
    """Read or simulate genotypes, map them to the hierarchy's gene indices and split them (no caching).

    `key` and `source` (describe_source's result, computed when not given) are recorded in meta."""
    validate_config(cfg)
    source = describe_source(cfg, base_dir) if source is None else source
    if cfg.source == "simulate":
        sim = simulate_genotypes(hierarchy, cfg)
        gene_indices, offsets = sim.gene_indices, sim.offsets
        phenotypes, stats = sim.fitness.astype(np.float32), sim.stats
        names: tuple[str, ...] = ("fitness",)
    else:
        file = resolve_path(cfg.path, base_dir)
        table = _read_source(hierarchy, cfg, file)
        column = sga_phenotype_column(cfg.phenotype) if cfg.source == "sga" else cfg.phenotype
        gene_indices, offsets = _table_csr(table.frame["genes"], hierarchy.gene_index)
        phenotypes, stats, names = table.frame[column].to_numpy(np.float32), table.stats, (cfg.phenotype,)
    if len(phenotypes) == 0:
        raise GenotypeDataError(f"no genotypes left to build a dataset from ({cfg.source}, stats {stats})")
    splits = split_rows(gene_indices, offsets, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    meta = {"key": key, "source": dict(source), "stats": _jsonable(stats),
            "source_path": None if cfg.source == "simulate" else str(file),
            "hierarchy": cache.hierarchy_digest(hierarchy), "split_sizes": {n: len(r) for n, r in splits.items()}}
    return GenotypeDataset(gene_indices, offsets, phenotypes, hierarchy.num_genes, names, splits, meta)


def load_or_build_dataset(hierarchy: Hierarchy, cfg: GenotypeConfig, cache_dir: str | Path,
                          base_dir: str | Path | None) -> GenotypeDataset:
    """The dataset for (hierarchy, cfg) from `<cache_dir>/datasets/<key>.npz`, built and cached on a miss.

    Relative `cfg.path` values are resolved against `base_dir` (None: the working directory).
    The returned meta says "cache": "hit" or "built" and holds the key, the source and its stats. A cache file
    that fails its checks (unreadable, checksum mismatch, wrong key) is rebuilt and replaced, with a
    CacheRebuiltWarning naming it and saying why.
    """
    validate_config(cfg)
    split_settings = {"val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction,
                      "split_seed": cfg.split_seed}
    source = describe_source(cfg, base_dir)
    key = cache.cache_key(hierarchy, source, split_settings)
    path = cache.cache_path(cache_dir, key)
    if path.is_file():
        try:
            dataset = _read_cached(path, key, hierarchy.num_genes)
            return dataclasses.replace(dataset, meta={**dataset.meta, "cache": "hit", "cache_path": str(path)})
        except cache.GenotypeCacheError as exc:
            warn_cache_rebuilt(path, exc.reason)
    dataset = build_dataset(hierarchy, cfg, base_dir, key, source)
    cache.write_npz_atomic(path, dataset.to_arrays())
    return dataclasses.replace(dataset, meta={**dataset.meta, "cache": "built", "cache_path": str(path)})


def _read_cached(path: Path, key: str, num_genes: int) -> GenotypeDataset:
    """The dataset in a cache file, or GenotypeCacheError naming the file when it fails a check: unreadable,
    checksum mismatch, arrays that do not form a valid dataset, or another key or gene count than expected."""
    arrays = cache.read_npz(path)
    try:
        dataset = GenotypeDataset.from_arrays(arrays)
    except (KeyError, ValueError, TypeError) as exc:  # GenotypeDataError and bad JSON are ValueErrors
        raise cache.GenotypeCacheError(path, f"does not hold a valid dataset ({type(exc).__name__}: {exc})") from exc
    if dataset.meta.get("key") != key or dataset.num_genes != num_genes:
        raise cache.GenotypeCacheError(path, f"holds key {dataset.meta.get('key')!r} with {dataset.num_genes} genes; "
                                             f"expected {key!r} with {num_genes}")
    return dataset


def _read_source(hierarchy: Hierarchy, cfg: GenotypeConfig, path: Path) -> GenotypeTable:
    known = hierarchy.gene_index
    if cfg.source == "sga":
        return read_sga(path, known, cfg.phenotype, cfg.drop_unknown, cfg.drop_missing)
    return read_table(path, cfg.phenotype, known, cfg.genes_column, cfg.gene_separator, cfg.drop_unknown,
                      cfg.drop_missing)


def _table_csr(genes: pd.Series, gene_index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """CSR gene indices from a column of ORF tuples (all known: the readers checked), rows sorted by index."""
    lengths = genes.map(len).to_numpy(dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = genes.explode().map(gene_index).to_numpy(dtype=np.int64)  # [nnz], in row order
    order = np.lexsort((flat, row_of_entries(offsets)))  # by row, then gene index
    return flat[order], offsets


def _jsonable(value):
    """Stats with numpy scalars turned into Python numbers, so meta survives JSON."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
