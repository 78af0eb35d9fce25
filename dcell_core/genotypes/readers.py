"""Genotype readers: the generic CSV / TSV / Parquet table here; the screen releases in sga.py (Costanzo 2016)
and kuzmin.py (Kuzmin 2018 / 2020).

All return a `GenotypeTable` (table.py): genes as sorted ORF codes, one float column per phenotype and where
each row sits in its file. Bad input raises ONE `GenotypeFileError` naming the file, the line (1-based as an
editor counts, header = line 1; Parquet: the 1-based data row) and the offending value. Rows are dropped only
on explicit opt-in (`drop_unknown`, `drop_missing`, the screens' filters) and every drop is counted in
`GenotypeTable.stats`. Line numbers assume one record per line (no quoted newlines), which holds for the
release formats.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import pandas as pd

from .kuzmin import read_kuzmin
from .sga import SGA_PHENOTYPE_ALIASES, SGA_PHENOTYPE_COLUMNS, read_sga, sga_phenotype_column
from .table import (MISSING_TOKENS, GenotypeFileError, GenotypeTable, Interner, build_table, finish,
                    numeric_values)

__all__ = ["GenotypeFileError", "GenotypeTable", "MISSING_TOKENS", "SGA_PHENOTYPE_ALIASES",
           "SGA_PHENOTYPE_COLUMNS", "read_kuzmin", "read_sga", "read_table", "sga_phenotype_column"]

TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}


def read_table(
    path: str | Path,
    phenotypes: str | Sequence[str],
    known_genes: Collection[str] | None = None,
    genes_column: str = "genes",
    separator: str = "+",
    drop_unknown: bool = False,
    drop_missing: bool = False,
) -> GenotypeTable:
    """Read a generic genotype table: .csv, .tsv / .tab / .txt (tab) or .parquet, chosen by extension.

    `genes_column` holds each row's perturbed ORFs joined by `separator` ("YAL001C+YBR002W"); every column in
    `phenotypes` must be numeric and present in every kept row (the first is the training target). Other
    columns are ignored.
    """
    names = (phenotypes,) if isinstance(phenotypes, str) else tuple(phenotypes)
    if not names:
        raise ValueError(f"{path}: read_table needs at least one phenotype column")
    raw, lines, unit, stats = read_rows(path, [genes_column, *names])

    def error(row: int, problem: str, value: object = None) -> GenotypeFileError:
        return GenotypeFileError(path, problem, int(lines[row]), value, unit)

    genes = Interner()
    lists = _gene_lists(raw[genes_column], genes_column, separator, error)
    width = max((len(g) for g in lists), default=1)
    codes = np.full((len(lists), width), -1, dtype=np.int32)
    for i, row in enumerate(lists):
        codes[i, :len(row)] = [genes.code(g) for g in row]
    data = {"file": np.zeros(len(raw), dtype=np.int16), "line": lines}
    for name in names:
        data[name], bad = numeric_values(raw[name])
        if bad.any():
            row = int(np.argmax(bad))
            raise error(row, f"non-numeric value in column {name!r}", raw[name].iat[row])
    table = build_table([str(path)], genes.names, codes, pd.DataFrame(data), names, stats, unit)
    return finish(table, list(names), known_genes, drop_unknown, drop_missing)


def read_rows(path: str | Path, required: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray, str, dict]:
    """(cells, the line or Parquet row of each, "line" or "row", stats) of a generic table whose header has every
    `required` column; fully empty text lines carry no record: they are skipped and counted."""
    raw, first, unit = _read_raw(path, sep=_separator_for(path))
    missing = [c for c in required if c not in raw.columns]
    if missing:
        have = ", ".join(repr(c) for c in raw.columns)
        raise GenotypeFileError(path, f"missing column {missing[0]!r} (header has {have})",
                                None if unit == "row" else 1)
    stats: dict = {"rows_read": len(raw), "blank_lines": 0}
    if unit == "line" and not raw.empty:
        blank = raw.eq("").all(axis=1).to_numpy()
        stats["blank_lines"] = int(blank.sum())
        raw = raw[~blank]
    return raw, np.asarray(raw.index, dtype=np.int64) + first, unit, stats


def _separator_for(path: str | Path) -> str | None:
    """Field separator from the extension (a trailing compression suffix is skipped); None = Parquet."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if len(suffixes) > 1 and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst"):
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext == ".parquet":
        return None
    if ext not in TEXT_SEPARATORS:
        raise GenotypeFileError(path, "unsupported file type (use .csv, .tsv, .tab, .txt or .parquet)", value=ext)
    return TEXT_SEPARATORS[ext]


def _read_raw(path: str | Path, sep: str | None) -> tuple[pd.DataFrame, int, str]:
    """(cells, position of data row 0, unit): every cell as a string (text) or its stored type (Parquet)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"genotype file not found: {path}")
    if sep is None:
        return pd.read_parquet(path).reset_index(drop=True), 1, "row"
    quoting = csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE  # TSV releases never quote
    try:  # re-raised with the file name; pandas' own message keeps its line number
        raw = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False,
                          skip_blank_lines=False, quoting=quoting, encoding="utf-8")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise GenotypeFileError(path, f"cannot parse as {'CSV' if sep == ',' else 'TSV'} ({exc})") from exc
    return raw, 2, "line"  # text: header is line 1


def _gene_lists(column: pd.Series, header: str, separator: str, error) -> list[list[str]]:
    """Each cell split into its ORFs; empty lists, empty names or repeats are errors."""
    out: list[list[str]] = []
    for row, cell in enumerate(column.tolist()):  # per row: an error names the row it found
        if not isinstance(cell, str):
            raise error(row, f"column {header!r} must hold text, found {type(cell).__name__}", cell)
        if cell.strip() == "":
            raise error(row, f"empty gene list in column {header!r}", cell)
        names = [g.strip() for g in cell.split(separator)]
        if any(g == "" for g in names):
            raise error(row, f"empty gene name in column {header!r} (separator {separator!r})", cell)
        if len(set(names)) != len(names):
            raise error(row, f"gene listed twice in column {header!r}", cell)
        out.append(names)
    return out
