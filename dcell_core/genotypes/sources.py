"""A configured genotype file source: its files, what determines its content (the cache key's source part),
the table it reads as under the repeats policy, and the set of genes it disrupts.

`genotype_genes(cfg, base_dir, cache_dir=None)` is what a gene universe over the dataset's genes needs: the
genes of every row the data config keeps (same files, filters and marker removal as the dataset, no hierarchy
check), cached by the source's content key when a cache directory is given.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Collection

from dcell_core.fileio import atomic_write_bytes, file_sha256, warn_cache_rebuilt
from dcell_core.ontology.build import resolve_path as resolve_config_path

from .config import GenotypeConfig, validate_config
from .kuzmin import kuzmin_phenotype_column, read_kuzmin
from .readers import read_table
from .repeats import apply_repeats
from .sga import read_sga, sga_phenotype_column
from .simulate import simulation_settings
from .table import GenotypeTable

GENES_CACHE_FORMAT = 1


def resolve_paths(cfg: GenotypeConfig, base_dir: str | Path | None) -> list[Path]:
    """The configured files, resolved like the ontology's files; every one must exist (one error lists the
    missing ones, with where the release is published when the data config says so)."""
    paths = [resolve_config_path(p, base_dir) for p in cfg.paths()]
    if not paths:
        raise ValueError(f"genotype source {cfg.source!r} needs a file path (data.genotypes.path), got none")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing)
        where = f"(data.genotypes.path={cfg.path!r}, base_dir={base_dir})"
        release = (f". These files are not shipped with dcell_core; they are {cfg.release.strip()}. Save them "
                   "under those names or point data.genotypes.path at your copies") if cfg.release.strip() else ""
        raise FileNotFoundError(f"genotype file not found: {shown} {where}{release}")
    return paths


def target_column(cfg: GenotypeConfig) -> str:
    """The table column holding the configured phenotype."""
    if cfg.source == "sga":
        return sga_phenotype_column(cfg.phenotype)
    if cfg.source == "kuzmin":
        return kuzmin_phenotype_column(cfg.phenotype)
    return cfg.phenotype


def describe_source(cfg: GenotypeConfig, base_dir: str | Path | None) -> dict:
    """What determines the genotypes (enters the cache key): simulator settings, or the files' sha256 (in order)
    plus every reader setting. Paths are left out, so moved, unchanged files keep their key (meta records them);
    `release` is documentation and stays out too."""
    if cfg.source == "simulate":
        return {"kind": "simulate", "phenotype": cfg.phenotype, **simulation_settings(cfg)}
    spec = {"kind": cfg.source, "file_sha256": [file_sha256(p) for p in resolve_paths(cfg, base_dir)],
            "phenotype": cfg.phenotype, "drop_unknown": cfg.drop_unknown, "drop_missing": cfg.drop_missing,
            "repeats": cfg.repeats}
    if cfg.source == "table":
        spec.update(genes_column=cfg.genes_column, gene_separator=cfg.gene_separator)
    elif cfg.source == "sga":
        spec.update(alleles=sorted(cfg.alleles), singles=cfg.singles,
                    temperatures=None if cfg.temperatures is None else sorted(cfg.temperatures))
    elif cfg.source == "kuzmin":
        spec.update(neutral_genes=sorted(cfg.neutral_genes),
                    mutant_types=None if cfg.mutant_types is None else sorted(cfg.mutant_types))
    return spec


def read_source(cfg: GenotypeConfig, base_dir: str | Path | None,
                known_genes: Collection[str] | None = None) -> GenotypeTable:
    """The rows of a file source as configured (reader options, then the repeats policy); `known_genes` None
    skips the gene check."""
    validate_config(cfg)
    return apply_repeats(_read(cfg, resolve_paths(cfg, base_dir), known_genes), cfg.repeats)


def _read(cfg: GenotypeConfig, paths: list[Path], known_genes: Collection[str] | None) -> GenotypeTable:
    if cfg.source == "sga":
        return read_sga(paths, known_genes, cfg.phenotype, cfg.drop_unknown, cfg.drop_missing,
                        alleles=list(cfg.alleles), temperatures=cfg.temperatures, singles=cfg.singles)
    if cfg.source == "kuzmin":
        return read_kuzmin(paths, known_genes, cfg.phenotype, cfg.drop_unknown, cfg.drop_missing,
                           neutral_genes=list(cfg.neutral_genes), mutant_types=cfg.mutant_types)
    if cfg.source == "table":
        return read_table(paths[0], cfg.phenotype, known_genes, cfg.genes_column, cfg.gene_separator,
                          cfg.drop_unknown, cfg.drop_missing)
    raise ValueError(f"source {cfg.source!r} is not read from files")


def genotype_genes(cfg: GenotypeConfig, base_dir: str | Path | None,
                   cache_dir: str | Path | None = None) -> frozenset[str]:
    """Every gene disrupted in at least one genotype the configured file source keeps (reader filters, marker
    genes removed, rows lacking the phenotype dropped or refused as the config says; no hierarchy check).

    With `cache_dir`, the set is stored at `<cache_dir>/genotype_genes/<key>.json` (key: the source's content
    and settings, as in the dataset cache), so a 20-million-row release is read once, not at every run.
    """
    validate_config(cfg)
    if cfg.source == "simulate":
        raise ValueError("the genes of a genotype source need genotypes read from a file (data.genotypes.source "
                         "sga, kuzmin or table); simulated genotypes are drawn from the hierarchy's genes")
    if cache_dir is None:
        return _read(cfg, resolve_paths(cfg, base_dir), None).present_genes()
    source = describe_source(cfg, base_dir)
    source.pop("drop_unknown"), source.pop("repeats")  # neither changes which genes rows name without a hierarchy
    key = hashlib.sha256(json.dumps({"format": GENES_CACHE_FORMAT, "source": source}, sort_keys=True).encode())
    path = Path(cache_dir) / "genotype_genes" / f"{key.hexdigest()}.json"
    cached = _read_genes(path, key.hexdigest())
    if cached is not None:
        return cached
    genes = _read(cfg, resolve_paths(cfg, base_dir), None).present_genes()
    listed = sorted(genes)
    body = {"key": key.hexdigest(), "genes": listed,
            "sha256": hashlib.sha256(json.dumps(listed).encode()).hexdigest()}
    atomic_write_bytes(path, json.dumps(body).encode())
    return genes


def _read_genes(path: Path, key: str) -> frozenset[str] | None:
    """The cached gene set, or None when there is none; a file failing its checks is rebuilt with a warning."""
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
        genes = body["genes"]
        if body["key"] != key or hashlib.sha256(json.dumps(genes).encode()).hexdigest() != body["sha256"]:
            raise ValueError("its key or checksum does not match its content")
        return frozenset(genes)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warn_cache_rebuilt(path, f"cannot be used ({type(exc).__name__}: {exc})")
        return None
