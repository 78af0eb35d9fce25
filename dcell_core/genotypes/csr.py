"""Genotypes as CSR arrays: `gene_indices` int64 [nnz] and `offsets` int64 [N + 1].

Genotype i disrupts genes gene_indices[offsets[i]:offsets[i + 1]] (sorted, distinct, at least one). This is
the only per-sample storage: a few integers per genotype instead of a per-sample table.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


class GenotypeDataError(ValueError):
    """Genotype arrays that violate an invariant; the message names the offending row and value."""


def csr_from_lists(rows: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(gene_indices [nnz], offsets [N + 1]) from per-genotype gene index lists, each sorted on the way."""
    rows = [sorted(r) for r in rows]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((g for r in rows for g in r), dtype=np.int64, count=int(offsets[-1]))
    return flat, offsets


def row_of_entries(offsets: np.ndarray) -> np.ndarray:
    """Row id of every CSR entry, int64 [nnz]."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


def ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """int64 [sum(lengths)]: the positions starts[i] .. starts[i] + lengths[i] - 1 of every i, concatenated (a
    vectorized gather of CSR slices)."""
    first = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts) - first, lengths) + np.arange(int(np.sum(lengths)), dtype=np.int64)


def validate_csr(gene_indices: np.ndarray, offsets: np.ndarray, num_genes: int) -> None:
    """Raise GenotypeDataError naming the first row that breaks a CSR genotype invariant."""
    if gene_indices.ndim != 1 or offsets.ndim != 1 or len(offsets) < 1:
        raise GenotypeDataError(f"gene_indices and offsets must be 1-D (offsets non-empty), got shapes "
                                f"{gene_indices.shape}, {offsets.shape}")
    if not (np.issubdtype(gene_indices.dtype, np.integer) and np.issubdtype(offsets.dtype, np.integer)):
        raise GenotypeDataError(f"gene_indices and offsets must be integer, got {gene_indices.dtype}, "
                                f"{offsets.dtype}")
    if offsets[0] != 0 or offsets[-1] != len(gene_indices):
        raise GenotypeDataError(f"offsets must run from 0 to {len(gene_indices)} (nnz), got {offsets[0]} .. "
                                f"{offsets[-1]}")
    lengths = np.diff(offsets)
    if (lengths <= 0).any():
        row = int(np.argmax(lengths <= 0))
        raise GenotypeDataError(f"genotype row {row} has {lengths[row]} genes; every genotype needs >= 1")
    out_of_range = (gene_indices < 0) | (gene_indices >= num_genes)
    if out_of_range.any():
        pos = int(np.argmax(out_of_range))
        row = int(np.searchsorted(offsets, pos, side="right") - 1)
        raise GenotypeDataError(f"genotype row {row} has gene index {gene_indices[pos]} outside [0, {num_genes})")
    # within a row genes must strictly increase: a step <= 0 between neighbours of the same row
    same_row = np.ones(len(gene_indices), dtype=bool)
    same_row[offsets[:-1]] = False  # first entry of each row has no left neighbour in its row
    step_bad = same_row[1:] & (np.diff(gene_indices) <= 0)
    if step_bad.any():
        pos = int(np.argmax(step_bad)) + 1
        row = int(np.searchsorted(offsets, pos, side="right") - 1)
        genes = gene_indices[offsets[row]:offsets[row + 1]].tolist()
        raise GenotypeDataError(f"genotype row {row} genes must be sorted and distinct, got {genes}")
