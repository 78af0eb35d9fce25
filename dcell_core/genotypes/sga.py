"""Costanzo et al. 2016 (Science 353:aaf1420) pair-wise SGA release: SGA_ExE.txt, SGA_NxN.txt, SGA_ExN_NxE.txt and
SGA_DAmP.txt, tab-separated, 11 columns, read unchanged, one file or several in order.

Each row is the double mutant (query ORF, array ORF), read in chunks with integer strain codes so the full
release (about 20 million rows) fits in a few GB. Per row the table keeps the strains, their allele classes
(strains.allele_class), the array type and temperature of the screen (`Arraytype/Temp`: DMA or TSA, 26 or 30 °C)
and the six numeric columns. Options: keep some allele classes or temperatures (drops counted), add one
single-mutant row per (strain, temperature) from the SMF columns.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import pandas as pd

from .config import ALLELE_CLASSES
from .strains import StrainBook
from .table import GenotypeTable, Interner, build_table, count_drop, finish
from .textio import CHUNK_ROWS, ReleaseRows, canonical_header, read_text_chunks, read_text_header

SGA_QUERY, SGA_ARRAY = "Query Strain ID", "Array Strain ID"
SGA_TEXT_COLUMNS = {  # our name -> release header
    "query_strain": SGA_QUERY,
    "query_allele_name": "Query allele name",
    "array_strain": SGA_ARRAY,
    "array_allele_name": "Array allele name",
    "arraytype_temp": "Arraytype/Temp",
}
SGA_PHENOTYPE_COLUMNS = {  # our name -> release header
    "epsilon": "Genetic interaction score (ε)",
    "pvalue": "P-value",
    "smf_query": "Query single mutant fitness (SMF)",
    "smf_array": "Array SMF",
    "dmf": "Double mutant fitness",
    "dmf_std": "Double mutant fitness standard deviation",
}
SGA_PHENOTYPE_ALIASES = {"fitness": "dmf"}  # config name "fitness" = the genotype's fitness column
_ARRAYTYPE = re.compile(r"^([A-Za-z]+)\s*(\d+)$")  # DMA30, TSA26: array type and temperature in °C
_PAIR_LABELS = [f"{a}+{b}" for a in ALLELE_CLASSES for b in ALLELE_CLASSES]  # `alleles` codes 0..8, then singles


def sga_phenotype_column(name: str) -> str:
    """Map a configured SGA phenotype name ("fitness", "epsilon", ...) to the reader's column name."""
    column = SGA_PHENOTYPE_ALIASES.get(name, name)
    if column not in SGA_PHENOTYPE_COLUMNS:
        valid = sorted(SGA_PHENOTYPE_COLUMNS) + sorted(SGA_PHENOTYPE_ALIASES)
        raise ValueError(f"unknown SGA phenotype {name!r}; choose one of {valid}")
    return column


def _kuzmin_hint(header: set) -> str:
    if canonical_header("Combined mutant type") in header:
        return "; this is a Kuzmin 2018 / 2020 table: read it with source kuzmin"
    return ""


def read_sga(
    path: str | Path | Sequence[str | Path],
    known_genes: Collection[str] | None = None,
    phenotype: str = "fitness",
    drop_unknown: bool = False,
    drop_missing: bool = False,
    *,
    alleles: Sequence[str] = ALLELE_CLASSES,
    temperatures: Sequence[int] | None = None,
    singles: bool = False,
    chunk_rows: int = CHUNK_ROWS,
) -> GenotypeTable:
    """Read Costanzo 2016 pair-wise SGA files (tab-separated, release headers), in order.

    The ORF of a strain is the part of its id before the first underscore (`YAL002W_tsq508` -> YAL002W); a row
    whose two strains disrupt the same ORF becomes a one-gene genotype (stats["same_orf_rows"]). Columns:
    smf_query, smf_array, dmf, dmf_std, epsilon, pvalue (float64); query_strain, array_strain, query_allele,
    array_allele (allele classes), alleles (the classes in gene order, "deletion+other"), temperature (°C),
    array_type (DMA / TSA). Rows are kept when all their strains are of a class in `alleles` and their
    temperature is in `temperatures` (None = all); drops are counted. `singles=True` adds one row per
    (strain, temperature) with the mean of its SMF values in `dmf`. The configured `phenotype` must be present
    in every kept row; other columns may be empty (NaN, counted in stats["missing_values"]).
    """
    target = sga_phenotype_column(phenotype)
    files = [str(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
    rows = _SgaRows()
    for index, file in enumerate(files):
        rows.read_file(index, file, chunk_rows)
    arrays = rows.arrays()
    stats = rows.stats
    stats["same_orf_rows"] = int((rows.orf_of(arrays["query_strain"]) == rows.orf_of(arrays["array_strain"])).sum())
    stats["rows_by_temperature"] = _counts(arrays["temperature"])
    if singles:
        arrays = _with_singles(arrays, stats)
    arrays = _filter(arrays, stats, alleles, temperatures)
    table = _table(files, rows, arrays, stats)
    return finish(table, [target], known_genes, drop_unknown, drop_missing)


class _SgaRows(ReleaseRows):
    """Rows parsed so far, as per-chunk arrays of integer codes (strains, allele names, array types)."""
    TEXT, NUMERIC = SGA_TEXT_COLUMNS, SGA_PHENOTYPE_COLUMNS
    EMPTY_TYPES = {"file": np.int16, "line": np.int64, "query_strain": np.int32, "array_strain": np.int32,
                   "query_class": np.int8, "array_class": np.int8, "arraytype": np.int16}

    def __init__(self) -> None:
        super().__init__()
        self.genes = Interner()
        self.strains = StrainBook(self.genes, multi=False, width=1)
        self.allele_names = Interner()
        self.arraytypes = Interner()
        self.arraytype_parsed: list[tuple[str, int]] = []  # per arraytype code: (array type, temperature)

    def read_file(self, index: int, path: str, chunk_rows: int) -> None:
        header_line, columns = read_text_header(path, {**SGA_TEXT_COLUMNS, **SGA_PHENOTYPE_COLUMNS},
                                                hint=_kuzmin_hint)
        self.read_chunks(index, path, read_text_chunks(path, header_line, columns, list(SGA_TEXT_COLUMNS),
                                                       list(SGA_PHENOTYPE_COLUMNS), chunk_rows))

    def add_chunk(self, index: int, path: str, chunk: pd.DataFrame, lines: np.ndarray) -> None:
        text, values, lines, error = self.parse(path, chunk, lines)
        query = self.strains.codes(*text["query_strain"], SGA_QUERY, error)
        array = self.strains.codes(*text["array_strain"], SGA_ARRAY, error)
        query_names = _intern(*text["query_allele_name"], self.allele_names)
        array_names = _intern(*text["array_allele_name"], self.allele_names)
        self.append({
            "file": np.full(len(lines), index, dtype=np.int16), "line": lines,
            "query_strain": query, "array_strain": array,
            "query_class": self.strains.classes(query, query_names, self.allele_names.names),
            "array_class": self.strains.classes(array, array_names, self.allele_names.names),
            "arraytype": self._arraytypes(*text["arraytype_temp"], error),
            **values,
        })

    def _arraytypes(self, codes: np.ndarray, categories: list[str], error) -> np.ndarray:
        header = SGA_TEXT_COLUMNS["arraytype_temp"]
        if (codes < 0).any():
            raise error(int(np.argmax(codes < 0)), f"empty {header}", "")
        lookup = np.full(len(categories), -1, dtype=np.int16)
        for k, value in enumerate(categories):
            if value not in self.arraytypes.index:
                match = _ARRAYTYPE.match(value)
                if match is None:
                    if not (codes == k).any():
                        continue
                    raise error(int(np.argmax(codes == k)), f"malformed {header} (expected array type and "
                                                            "temperature such as DMA30 or TSA26)", value)
                self.arraytype_parsed.append((match.group(1).upper(), int(match.group(2))))
            lookup[k] = self.arraytypes.code(value)
        return lookup[codes]

    def arrays(self) -> dict[str, np.ndarray]:
        """Every part concatenated, plus `temperature` per row."""
        out = self.concatenated()
        temps = np.array([t for _, t in self.arraytype_parsed] + [-1], dtype=np.int16)
        out["temperature"] = temps[out["arraytype"]]
        return out

    def orf_of(self, strains: np.ndarray) -> np.ndarray:
        """Gene code int32 [n] of strain codes (-1 -> -1)."""
        return self.strains.orf_matrix(strains)[:, 0]


def _intern(codes: np.ndarray, categories: list[str], interner: Interner) -> np.ndarray:
    """Chunk category codes -> codes of `interner` (int32; -1 stays -1)."""
    lookup = np.array([interner.code(c) for c in categories] + [-1], dtype=np.int32)
    return lookup[codes]


def _counts(values: np.ndarray) -> dict:
    counts = pd.Series(values).value_counts().sort_index()
    return {int(k): int(c) for k, c in counts.items()}


def _with_singles(arrays: dict[str, np.ndarray], stats: dict) -> dict[str, np.ndarray]:
    """Append one single-mutant row per (strain, temperature) seen with an SMF value, in order of first
    appearance: fitness (`dmf`) = the mean of that strain's SMF values at that temperature."""
    n = len(arrays["line"])
    # Both sides of every row, interleaved so that position order is file order: [2N]
    strain = np.stack([arrays["query_strain"], arrays["array_strain"]], axis=1).reshape(-1)
    klass = np.stack([arrays["query_class"], arrays["array_class"]], axis=1).reshape(-1)
    value = np.stack([arrays["smf_query"], arrays["smf_array"]], axis=1).reshape(-1)
    row = np.repeat(np.arange(n, dtype=np.int64), 2)
    key = (strain.astype(np.int64) << 16) | arrays["temperature"][row].astype(np.int64)
    valid = ~np.isnan(value)
    stats["singles_without_smf"] = int(len(pd.unique(key)) - len(pd.unique(key[valid])))
    pos = np.flatnonzero(valid)
    order = pos[np.argsort(key[pos], kind="stable")]  # valid positions grouped by key, file order inside
    k = key[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, dtype=np.int64)
    first = order[starts] if len(k) else np.zeros(0, dtype=np.int64)  # first appearance of each key
    v = value[order]
    means = np.add.reduceat(v, starts) / np.diff(np.r_[starts, len(k)]) if len(k) else np.zeros(0)
    conflicting = (np.maximum.reduceat(v, starts) != np.minimum.reduceat(v, starts)) if len(k) else np.zeros(0, bool)
    chrono = np.argsort(first, kind="stable")
    first, means = first[chrono], means[chrono]
    stats["singles_added"] = len(first)
    stats["singles_conflicting"] = int(conflicting.sum())  # (strain, temperature) with differing SMF values
    m = len(first)
    src = row[first]
    single = {
        "file": arrays["file"][src], "line": arrays["line"][src],
        "query_strain": strain[first], "array_strain": np.full(m, -1, dtype=np.int32),
        "query_class": klass[first], "array_class": np.full(m, -1, dtype=np.int8),
        "arraytype": arrays["arraytype"][src], "temperature": arrays["temperature"][src],
        **{name: np.full(m, np.nan) for name in SGA_PHENOTYPE_COLUMNS},
    }
    single["dmf"] = means
    return {name: np.concatenate([arrays[name], single[name]]) for name in arrays}


def _filter(arrays: dict[str, np.ndarray], stats: dict, alleles: Sequence[str],
            temperatures: Sequence[int] | None) -> dict[str, np.ndarray]:
    """Keep rows whose strains are all of a kept allele class and whose temperature is kept; count drops."""
    unknown = [a for a in alleles if a not in ALLELE_CLASSES]
    if unknown:
        raise ValueError(f"alleles: {unknown} not in {list(ALLELE_CLASSES)}")
    kept_class = np.array([c in alleles for c in ALLELE_CLASSES] + [True])  # code -1 (no array strain): kept
    keep = kept_class[arrays["query_class"]] & kept_class[arrays["array_class"]]
    count_drop(stats, "alleles", int((~keep).sum()))
    if temperatures is not None:
        found = set(np.unique(arrays["temperature"]).tolist())
        absent = [t for t in temperatures if t not in found]
        if absent:
            raise ValueError(f"temperatures: {absent} occur in no row of the files read (found {sorted(found)})")
        by_temp = np.isin(arrays["temperature"], list(temperatures))
        count_drop(stats, "temperature", int((keep & ~by_temp).sum()))
        keep &= by_temp
    else:
        count_drop(stats, "temperature", 0)
    if keep.all():
        return arrays
    return {name: values[keep] for name, values in arrays.items()}


def _table(files: list[str], rows: _SgaRows, arrays: dict[str, np.ndarray], stats: dict) -> GenotypeTable:
    query_orf, array_orf = rows.orf_of(arrays["query_strain"]), rows.orf_of(arrays["array_strain"])
    codes = np.stack([query_orf, array_orf], axis=1)  # build_table sorts each row and removes repeats
    names = np.asarray(rows.genes.names, dtype=object)
    rank = np.argsort(np.argsort(names, kind="stable"), kind="stable")
    query_first = (array_orf < 0) | (rank[query_orf] <= rank[np.maximum(array_orf, 0)])
    qc, ac = arrays["query_class"].astype(np.int16), arrays["array_class"].astype(np.int16)
    pair = np.where(query_first, qc * 3 + ac, ac * 3 + qc)
    labels = np.where(ac < 0, len(_PAIR_LABELS) + qc, pair)  # single-mutant rows: the strain's class
    strain_names = list(rows.strains.ids.names)
    arraytypes = [t for t, _ in rows.arraytype_parsed]
    data = pd.DataFrame({
        "file": arrays["file"], "line": arrays["line"],
        **{name: arrays[name] for name in SGA_PHENOTYPE_COLUMNS},
        "query_strain": pd.Categorical.from_codes(arrays["query_strain"], categories=strain_names),
        "array_strain": pd.Categorical.from_codes(arrays["array_strain"], categories=strain_names),
        "query_allele": pd.Categorical.from_codes(arrays["query_class"], categories=list(ALLELE_CLASSES)),
        "array_allele": pd.Categorical.from_codes(arrays["array_class"], categories=list(ALLELE_CLASSES)),
        "alleles": pd.Categorical.from_codes(labels, categories=_PAIR_LABELS + list(ALLELE_CLASSES)),
        "temperature": arrays["temperature"],
        "array_type": pd.Categorical.from_codes(_type_codes(arrays["arraytype"], arraytypes),
                                                categories=sorted(set(arraytypes))),
    })
    return build_table(files, names, codes, data, tuple(SGA_PHENOTYPE_COLUMNS), stats)


def _type_codes(arraytype: np.ndarray, types: list[str]) -> np.ndarray:
    categories = sorted(set(types))
    lookup = np.array([categories.index(t) for t in types] + [-1], dtype=np.int16)
    return lookup[arraytype]
