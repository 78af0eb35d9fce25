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

from dcell_core.fileio import warn_cache_rebuilt
from dcell_core.ontology.build import resolve_path as resolve_config_path
from dcell_core.ontology.hierarchy import Hierarchy

from . import cache
from .config import GenotypeConfig, validate_config
from .csr import GenotypeDataError, validate_csr
from .simulate import simulate_genotypes
from .sources import describe_source, read_source, resolve_paths, target_column
from .splits import SPLIT_NAMES, split_rows, validate_splits
from .table import GenotypeTable

__all__ = ["GenotypeDataset", "build_dataset", "describe_source", "load_or_build_dataset", "resolve_path",
           "table_csr"]


@dataclass(frozen=True, eq=False)
class GenotypeDataset:
    gene_indices: np.ndarray  # int64 [nnz]: genes of genotype i are gene_indices[offsets[i]:offsets[i + 1]]
    offsets: np.ndarray  # int64 [N + 1]
    phenotypes: np.ndarray  # float32 [N] or [N, k]
    num_genes: int  # width of the dense batch = hierarchy.num_genes
    phenotype_names: tuple[str, ...]  # one name per phenotype column
    splits: Mapping[str, np.ndarray]  # "train" / "val" / "test" -> sorted int64 row indices
    meta: Mapping = dataclasses.field(default_factory=dict)  # cache key, source, reader / simulator stats
    measurements: np.ndarray | None = None  # int32 [N] rows averaged into each row (repeats="mean"), else None

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
        if self.measurements is not None and (self.measurements.shape != (n_rows,) or
                                              not np.issubdtype(self.measurements.dtype, np.integer) or
                                              (n_rows and self.measurements.min() < 1)):
            raise GenotypeDataError(f"measurements must be integers >= 1, one per genotype ({n_rows}), got "
                                    f"{self.measurements.dtype} {self.measurements.shape}")

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
        if self.measurements is not None:
            out["measurements"] = self.measurements
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "GenotypeDataset":
        """Inverse of to_arrays (validated again on construction)."""
        return cls(
            gene_indices=arrays["gene_indices"], offsets=arrays["offsets"], phenotypes=arrays["phenotypes"],
            num_genes=int(arrays["num_genes"]), phenotype_names=tuple(arrays["phenotype_names"].tolist()),
            splits={name: arrays[f"split_{name}"] for name in SPLIT_NAMES},
            meta=json.loads(str(arrays["meta_json"])), measurements=arrays.get("measurements"),
        )


def resolve_path(path: str | None, base_dir: str | Path | None) -> Path:
    """Path of one configured genotype file, resolved like the ontology's files; it must exist
    (sources.resolve_paths resolves a data config's files, one or several)."""
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
    measurements = None
    if cfg.source == "simulate":
        sim = simulate_genotypes(hierarchy, cfg, base_dir)
        gene_indices, offsets = sim.gene_indices, sim.offsets
        phenotypes, stats, files = sim.fitness.astype(np.float32), sim.stats, None
        names: tuple[str, ...] = ("fitness",)
    else:
        table = read_source(cfg, base_dir, hierarchy.gene_index)
        gene_indices, offsets = table_csr(table, hierarchy.gene_index)
        phenotypes = table.data[target_column(cfg)].to_numpy(np.float32)
        stats, names, files = table.stats, (cfg.phenotype,), [str(p) for p in resolve_paths(cfg, base_dir)]
        if "measurements" in table.data:
            measurements = table.data["measurements"].to_numpy(np.int32)
    if len(phenotypes) == 0:
        raise GenotypeDataError(f"no genotypes left to build a dataset from ({cfg.source}, stats {stats})")
    splits = split_rows(gene_indices, offsets, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    if cfg.source == "simulate":  # the best any model can reach: the noise-free truth against the measurement
        val = splits["val"]
        stats["simulation"]["noise_ceiling_pearson"] = (
            float(np.corrcoef(sim.fitness_true[val], sim.fitness[val])[0, 1]) if len(val) > 1 else None)
    meta = {"key": key, "source": dict(source), "stats": _jsonable(stats),
            "source_path": files[0] if files and len(files) == 1 else files,
            "hierarchy": cache.hierarchy_digest(hierarchy), "split_sizes": {n: len(r) for n, r in splits.items()}}
    return GenotypeDataset(gene_indices, offsets, phenotypes, hierarchy.num_genes, names, splits, meta,
                           measurements)


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


def table_csr(table: GenotypeTable, gene_index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """CSR hierarchy gene indices (int64 [nnz], offsets [N + 1]) of a table whose genes are all known (the
    readers checked), each row sorted by index; vectorized over the table's gene codes."""
    lookup = np.array([gene_index.get(g, -1) for g in table.gene_names.tolist()] + [-1], dtype=np.int64)
    mapped = lookup[table.genes]  # [N, K]; padding (-1) -> -1
    if (mapped[table.genes >= 0] < 0).any():
        raise GenotypeDataError("a table row names a gene outside the hierarchy (the reader's gene check was skipped)")
    big = np.iinfo(np.int64).max
    mapped = np.sort(np.where(mapped < 0, big, mapped), axis=1)  # known genes first, ascending
    lengths = (mapped != big).sum(axis=1)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return mapped[mapped != big].astype(np.int64), offsets


def _jsonable(value):
    """Stats with numpy scalars turned into Python numbers, so meta survives JSON."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
