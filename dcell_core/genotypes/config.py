"""Typed configuration of the genotype data source (a Hydra structured config, `data` group).

Every knob that changes the data a model sees is a field here, so that it is logged with the resolved config
and enters the dataset cache key (`dataset.cache_key`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

SOURCES = ("simulate", "sga", "table")


@dataclass
class GenotypeConfig:
    # Where genotypes come from: "simulate" (simulate.py), "sga" (Costanzo 2016 pair-wise release table)
    # or "table" (generic CSV / TSV / Parquet with a gene-list column).
    source: str = "simulate"
    # File for "sga" / "table"; a relative path is resolved against the caller's base_dir. Unused by "simulate".
    path: Optional[str] = None
    # Phenotype to predict. sga: "fitness" (= double mutant fitness, "dmf"), "epsilon", "dmf", "smf_query",
    # "smf_array", "dmf_std", "pvalue"; table: a numeric column name; simulate: "fitness".
    phenotype: str = "fitness"
    # table: the column holding the perturbed ORFs of a row, joined by `gene_separator` ("YAL001C+YBR002W").
    genes_column: str = "genes"
    gene_separator: str = "+"
    # Drop rows naming genes absent from the hierarchy (counted in the dataset stats) instead of failing.
    drop_unknown: bool = False
    # Drop rows whose phenotype cell is empty / NA (counted in the stats) instead of failing.
    drop_missing: bool = False

    # ---- simulator (source == "simulate"); model documented in simulate.py and docs/genotypes.md ----------
    num_singles: int = -1  # single deletions; -1 = one per gene, else a sample of that many genes
    num_doubles: int = 10000  # distinct double deletions (defaults fit the 288-gene DNA repair hierarchy)
    num_triples: int = 5000  # distinct triple deletions
    related_fraction: float = 0.5  # share of doubles / triples drawn inside one term (SGA-like bias)
    threshold: float = 0.25  # fraction of a term's contained genes hit at which the term is half failed
    hill: float = 4.0  # steepness of the term failure curve (> 1 = buffering, hits interact)
    weight_scale: float = 0.5  # mean fitness cost of a fully failed term (term weights ~ scale * Exp(1))
    noise_std: float = 0.02  # Gaussian measurement noise added to fitness
    seed: int = 0  # simulator seed (term weights, sampled genotypes, noise)

    # ---- splits (all sources); rows with the same gene set always share a split --------------------------
    val_fraction: float = 0.1  # share of rows in the validation split
    test_fraction: float = 0.1  # share of rows in the test split
    split_seed: int = 0  # seed of the group shuffle that deals rows to splits

    def validate(self) -> None:
        """Raise one ValueError listing every invalid field with its value (see validate_config)."""
        validate_config(self)


def validate_config(cfg: GenotypeConfig) -> None:
    """Raise one ValueError listing every field whose value cannot work, with the value found."""
    problems = []
    if cfg.source not in SOURCES:
        problems.append(f"source: {cfg.source!r} not in {list(SOURCES)}")
    if cfg.source in ("sga", "table") and not cfg.path:
        problems.append(f"path: source {cfg.source!r} needs a file, got {cfg.path!r}")
    if cfg.source == "simulate" and cfg.phenotype != "fitness":
        problems.append(f"phenotype: the simulator produces 'fitness' only, got {cfg.phenotype!r}")
    if not cfg.gene_separator:
        problems.append("gene_separator: must be a non-empty string")
    problems += [f"{n}: must be >= 0, got {getattr(cfg, n)}" for n in ("num_doubles", "num_triples",
                                                                      "weight_scale", "noise_std")
                 if getattr(cfg, n) < 0]
    if cfg.num_singles < -1:
        problems.append(f"num_singles: must be -1 (every gene) or >= 0, got {cfg.num_singles}")
    problems += [f"{n}: must lie in [0, 1], got {getattr(cfg, n)}" for n in ("related_fraction", "val_fraction",
                                                                            "test_fraction")
                 if not 0.0 <= getattr(cfg, n) <= 1.0]
    if cfg.val_fraction + cfg.test_fraction >= 1.0:
        problems.append(f"val_fraction + test_fraction: must be < 1 to leave training data, got "
                        f"{cfg.val_fraction} + {cfg.test_fraction}")
    if not 0.0 < cfg.threshold <= 1.0:
        problems.append(f"threshold: must lie in (0, 1], got {cfg.threshold}")
    if cfg.hill <= 0:
        problems.append(f"hill: must be > 0, got {cfg.hill}")
    if problems:
        raise ValueError("invalid genotype config: " + "; ".join(problems))
