"""Strain ids and allele classes of the SGA releases (Costanzo 2016, Kuzmin 2018 / 2020).

A strain id is `ORF_suffix` (`YAL002W_tsq508`), or for a Kuzmin double-mutant query `ORF1+ORF2_suffix`
(`YAL015C+YDL227C_tm461`); the ORFs are the disrupted genes. The suffix tells how the gene is disrupted; the
release key and the Costanzo lab's supplements use `sn` (deletion query strains), `dma` (deletion mutant
array), `tsq` / `tsa` (temperature-sensitive query / array alleles) and `damp` (DAmP alleles). `allele_class`
turns that into the classes the `alleles` option filters on.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np
import pandas as pd

from .table import GenotypeFileError, Interner

ORF_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*$")  # YAL001C, YDR374W-A, Q0045; no spaces, no underscore
_DELETION_SUFFIX = re.compile(r"^(sn|dma)\d*$")


def parse_strain(strain_id: str, multi: bool) -> tuple[tuple[str, ...], str] | None:
    """(ORFs, suffix) of a strain id, or None when it is not ORF_suffix (ORF1+ORF2_suffix with multi=True)."""
    orfs, underscore, suffix = strain_id.strip().partition("_")
    names = tuple(orfs.split("+")) if multi else (orfs,)
    if not underscore or not suffix or len(names) > 2 or not all(ORF_PATTERN.match(n) for n in names):
        return None
    return names, suffix


def allele_class(strain_id: str, allele_name: str) -> int:
    """Index into config.ALLELE_CLASSES of a strain's disruption, from its suffix and allele name:
    damp: suffix `damp...` or an allele name ending in `damp` (`cdc28-damp`);
    deletion: suffix `sn<n>` / `dma<n>`, or an allele name ending in Δ / `delta` (`vps8Δ`);
    other: everything else (`tsq` / `tsa` temperature-sensitive alleles, other point alleles)."""
    suffix = strain_id.strip().partition("_")[2].lower()
    name = allele_name.strip().lower()
    if suffix.startswith("damp") or name.endswith("damp"):
        return 1
    if _DELETION_SUFFIX.match(suffix) or name.endswith(("δ", "delta")):
        return 0
    return 2


class StrainBook:
    """Strain ids seen so far (across chunks and files), each parsed once: its ORF codes (in `genes`)."""

    def __init__(self, genes: Interner, multi: bool, width: int) -> None:
        self.genes, self.multi, self.width = genes, multi, width
        self.ids = Interner()
        self.orfs: list[tuple[int, ...]] = []  # per strain code: gene codes
        self._classes: dict[tuple[int, int], int] = {}

    def codes(self, codes: np.ndarray, categories: list[str], header: str,
              error: Callable[[int, str, object], GenotypeFileError]) -> np.ndarray:
        """Strain codes int32 [n] for one chunk column (category `codes` [n], -1 = empty cell, an error)."""
        if (codes < 0).any():
            row = int(np.argmax(codes < 0))
            raise error(row, f"empty {header}", "")
        lookup = np.empty(len(categories), dtype=np.int32)
        for k, strain in enumerate(categories):
            known = self.ids.index.get(strain)
            if known is None:
                parsed = parse_strain(strain, self.multi)
                if parsed is None:
                    if not (codes == k).any():
                        lookup[k] = -1  # a category pandas kept although no row of this chunk uses it
                        continue
                    shape = "ORF_allele or ORF1+ORF2_allele" if self.multi else "ORF_allele"
                    raise error(int(np.argmax(codes == k)), f"malformed {header} (expected {shape} such as "
                                f"{'YAL015C+YDL227C_tm461' if self.multi else 'YAL002W_tsq508'})", strain)
                known = self.ids.code(strain)
                self.orfs.append(tuple(self.genes.code(orf) for orf in parsed[0]))
            lookup[k] = known
        return lookup[codes]

    def orf_matrix(self, strains: np.ndarray) -> np.ndarray:
        """Gene codes int32 [n, width] of strain codes [n] (-1 pads; strain -1 -> no gene)."""
        table = np.full((len(self.orfs) + 1, self.width), -1, dtype=np.int32)  # last row: strain -1
        for code, orfs in enumerate(self.orfs):
            table[code, :len(orfs)] = orfs
        return table[strains]

    def classes(self, strains: np.ndarray, allele_codes: np.ndarray, allele_names: list[str]) -> np.ndarray:
        """allele_class int8 [n] per (strain, allele name) pair; allele code -1 = no name."""
        width = len(allele_names) + 1
        inverse, unique = pd.factorize(strains.astype(np.int64) * width + (allele_codes + 1))  # hash, O(n)
        out = np.empty(len(unique), dtype=np.int8)
        for i, key in enumerate(unique.tolist()):
            strain, name = divmod(key, width)
            pair = (strain, name)
            found = self._classes.get(pair)
            if found is None:
                text = allele_names[name - 1] if name else ""
                found = self._classes[pair] = allele_class(self.ids.names[strain], text)
            out[i] = found
        return out[inverse]
