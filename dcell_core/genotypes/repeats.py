"""Repeated genotypes: rows that measure the same gene set (reciprocal query / array crosses, several alleles of a
gene, both screen temperatures, several screens).

The model sees which genes are disrupted, not the allele or the temperature, so such rows are one input with
several targets. The policy (GenotypeConfig.repeats) is explicit and its effect counted:
- "keep": every row stays (copies share a split: splits.py);
- "mean": one row per gene set, each phenotype the mean of its non-missing values, `measurements` = rows merged.
Either way stats record `repeated_genotypes` (gene sets with more than one row), `repeated_rows` (rows in them)
and, for each condition column present (`alleles`, `temperature`, `mutant_type`), `repeats_mixing_<column>`:
the gene sets whose rows differ in it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .config import REPEAT_POLICIES
from .splits import row_keys
from .table import GenotypeTable

CONDITION_COLUMNS = ("alleles", "temperature", "mutant_type")


def genotype_keys(genes: np.ndarray, num_names: int) -> np.ndarray:
    """One int64 per row, equal exactly for equal gene sets (rows of sorted codes, -1 padded) [N]."""
    key = row_keys(genes, num_names + 1)
    if key is None:
        return np.unique(genes, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)
    return key


def apply_repeats(table: GenotypeTable, policy: str) -> GenotypeTable:
    """The table under the repeats policy, with the repeat counts added to its stats."""
    if policy not in REPEAT_POLICIES:
        raise ValueError(f"repeats: {policy!r} not in {list(REPEAT_POLICIES)}")
    stats = table.stats
    stats["repeats"] = policy
    if len(table) == 0:
        stats.update(repeated_genotypes=0, repeated_rows=0)
        return table
    group = pd.factorize(genotype_keys(table.genes, len(table.gene_names)))[0]  # gene-set ids, first-seen order
    counts = np.bincount(group)
    running = np.maximum.accumulate(group)
    first = np.flatnonzero(np.r_[True, group[1:] > running[:-1]])  # each gene set's first row
    stats["repeated_genotypes"] = int((counts > 1).sum())
    stats["repeated_rows"] = int(counts[counts > 1].sum())
    for column in CONDITION_COLUMNS:
        if column in table.data:
            values, uniques = pd.factorize(table.data[column])
            width = len(uniques) + 1
            pairs = pd.unique(group.astype(np.int64) * width + (values + 1))  # distinct (gene set, value)
            stats[f"repeats_mixing_{column}"] = int((np.bincount(pairs // width) > 1).sum())
    if policy == "keep":
        return table
    return _mean(table, first, group, counts)


def _mean(table: GenotypeTable, first: np.ndarray, group: np.ndarray, counts: np.ndarray) -> GenotypeTable:
    """One row per gene set in order of first appearance (group ids are numbered that way): phenotype means,
    `measurements`, the file and line of the set's first row."""
    n_groups = len(counts)
    data = {"file": table.data["file"].to_numpy()[first], "line": table.data["line"].to_numpy()[first]}
    for name in table.phenotypes:
        values = table.data[name].to_numpy(dtype=np.float64)
        present = ~np.isnan(values)
        sums = np.bincount(group[present], weights=values[present], minlength=n_groups)
        seen = np.bincount(group[present], minlength=n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            data[name] = np.where(seen > 0, sums / np.maximum(seen, 1), np.nan)
    data["measurements"] = counts.astype(np.int32)
    table.stats["averaged_rows"] = len(group)
    table.stats["averaged_genotypes"] = n_groups
    return dataclasses.replace(table, genes=table.genes[first], data=pd.DataFrame(data))
