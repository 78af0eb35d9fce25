"""`GenotypeTable`: the rows a reader produced, in compact form, and the steps every reader shares.

A table holds genes as integer codes: `genes` int32 [N, K] indexes `gene_names` (sorted ORFs), each row's codes
ascending with -1 padding at the end, so 20 million SGA rows take a few hundred MB instead of 20 million Python
tuples. Per-row columns live in `data` (a DataFrame): `file` (index into `files`), `line` (where the row sits,
1-based as an editor counts; xlsx and Parquet: the sheet or data row), float64 phenotype columns and
categorical info columns. `frame` gives the old view with a `genes` column of ORF tuples (small tables, tests).

Bad input raises ONE `GenotypeFileError` naming the file, the line and the offending value. Rows are dropped
only on explicit options, and every drop is counted in `stats["dropped_<reason>"]`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import pandas as pd

MISSING_TOKENS = frozenset({"", "NA", "NaN", "nan", "N/A"})  # cells read as "no measurement"


class GenotypeFileError(ValueError):
    """Bad genotype input; the message names the file, the line (or sheet / Parquet row) and the offending value."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None, value: object = None,
                 unit: str = "line") -> None:
        self.path, self.line, self.value = str(path), line, value
        where = str(path) if line is None else f"{path}, {unit} {line}"
        super().__init__(f"{where}: {problem}" + ("" if value is None else f": {value!r}"))


@dataclass(frozen=True, eq=False)
class GenotypeTable:
    files: tuple[str, ...]  # the files read, in order (data["file"] indexes this)
    gene_names: np.ndarray  # object [G]: sorted distinct ORFs the codes refer to
    genes: np.ndarray  # int32 [N, K]: codes into gene_names, ascending per row, -1 pads the end
    data: pd.DataFrame  # [N]: file (int16), line (int64), float64 phenotypes, info columns
    phenotypes: tuple[str, ...]  # phenotype column names in `data`
    stats: dict = field(default_factory=dict)  # rows read, blank lines, drops and their reasons
    unit: str = "line"  # what `line` counts: "line" (text) or "row" (xlsx sheet row, Parquet data row)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def path(self) -> str:
        return ", ".join(self.files)

    @property
    def gene_counts(self) -> np.ndarray:
        """Genes per row, int64 [N]."""
        return (self.genes >= 0).sum(axis=1).astype(np.int64)

    def present_genes(self) -> frozenset[str]:
        """Every gene named by at least one row."""
        codes = np.unique(self.genes[self.genes >= 0])
        return frozenset(self.gene_names[codes].tolist())

    def gene_tuples(self) -> list[tuple[str, ...]]:
        names = self.gene_names
        return [tuple(names[c] for c in row if c >= 0) for row in self.genes.tolist()]

    @property
    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame with `genes` (sorted ORF tuples) and `file` (the path); builds Python
        tuples for every row, so meant for small tables."""
        frame = self.data.copy()
        frame["file"] = np.asarray(self.files, dtype=object)[frame["file"].to_numpy()]
        frame.insert(0, "genes", self.gene_tuples())
        return frame

    def where(self, row: int) -> tuple[str, int]:
        """(file, line) of row `row` (a position in this table)."""
        return self.files[int(self.data["file"].iat[row])], int(self.data["line"].iat[row])

    def error(self, row: int, problem: str, value: object = None) -> GenotypeFileError:
        path, line = self.where(row)
        return GenotypeFileError(path, problem, line, value, self.unit)

    def take(self, rows: np.ndarray) -> "GenotypeTable":
        """The table restricted to `rows` (a boolean mask or positions), stats shared."""
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows
        return dataclasses.replace(self, genes=self.genes[rows], data=self.data.iloc[rows].reset_index(drop=True))


def build_table(files: Sequence[str], names: Sequence[str], codes: np.ndarray, data: pd.DataFrame,
                phenotypes: Sequence[str], stats: dict, unit: str = "line") -> GenotypeTable:
    """A table from gene codes into `names` in any order (-1 = no gene): names sorted, codes renumbered,
    each row's codes sorted ascending with the padding last, repeats of a gene within a row removed."""
    names = np.asarray(list(names), dtype=object)
    order = np.argsort(names, kind="stable")
    rank = np.empty(len(names) + 1, dtype=np.int32)
    rank[order] = np.arange(len(names), dtype=np.int32)
    rank[-1] = -1  # code -1 -> -1
    genes = rank[np.asarray(codes, dtype=np.int64).reshape(len(data), -1)]
    genes = _sort_rows(genes)
    return GenotypeTable(tuple(str(f) for f in files), names[order], genes, data.reset_index(drop=True),
                         tuple(phenotypes), stats, unit)


def _sort_rows(genes: np.ndarray) -> np.ndarray:
    """Sort each row ascending, -1 last; a code repeated within a row is kept once."""
    if genes.shape[1] <= 1:
        return genes.astype(np.int32)
    big = np.iinfo(np.int32).max
    work = np.where(genes < 0, big, genes).astype(np.int32)
    work.sort(axis=1)
    repeat = np.zeros_like(work, dtype=bool)
    repeat[:, 1:] = (work[:, 1:] == work[:, :-1]) & (work[:, 1:] != big)
    if repeat.any():
        work[repeat] = big
        work.sort(axis=1)
    work[work == big] = -1
    return work


class Interner:
    """Growing dictionary of strings -> int32 codes, shared across chunks and files."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.names: list[str] = []

    def code(self, name: str) -> int:
        found = self.index.get(name)
        if found is None:
            found = self.index[name] = len(self.names)
            self.names.append(name)
        return found


# ---- columns ------------------------------------------------------------------------------------------------
def category_codes(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """(codes int64 [N], categories) of a text column; empty / missing cells get -1. Categories are stripped."""
    cat = column if isinstance(column.dtype, pd.CategoricalDtype) else column.astype("category")
    categories = [str(c).strip() for c in cat.cat.categories]
    codes = cat.cat.codes.to_numpy().astype(np.int64)
    empty = np.array([c == "" for c in categories] + [True], dtype=bool)  # last entry: code -1
    codes = np.where(empty[codes], -1, codes)
    return codes, categories


def numeric_values(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values [N], bad [N]): missing tokens -> NaN; non-numeric text or infinite values are bad."""
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64)
        return values, np.isinf(values)
    text = column.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    bad = (np.isnan(values) & ~text.isin(MISSING_TOKENS).to_numpy()) | np.isinf(values)
    return values, bad


# ---- shared finishing steps ---------------------------------------------------------------------------------
def count_drop(stats: dict, reason: str, n: int) -> None:
    """Record `n` rows dropped for `reason` (stats["dropped_<reason>"])."""
    stats[f"dropped_{reason}"] = stats.get(f"dropped_{reason}", 0) + int(n)


def drop_rows(table: GenotypeTable, drop: np.ndarray, reason: str) -> GenotypeTable:
    """Remove the rows flagged in `drop` (bool [N]) and count them under `reason`."""
    count_drop(table.stats, reason, int(drop.sum()))
    return table.take(~drop) if drop.any() else table


def check_missing(table: GenotypeTable, required: Sequence[str], drop_missing: bool) -> GenotypeTable:
    """Rows with no value in a required phenotype: one error, or dropped and counted on opt-in."""
    missing = table.data[list(required)].isna().any(axis=1).to_numpy()
    if missing.any() and not drop_missing:
        first = int(np.argmax(missing))
        column = next(c for c in required if np.isnan(table.data[c].iat[first]))
        raise table.error(first, f"no value in column {column!r} ({int(missing.sum())} rows lack a required "
                                 "phenotype; pass drop_missing=True to drop them)")
    return drop_rows(table, missing, "missing")


def check_known(table: GenotypeTable, known_genes: Collection[str] | None, drop_unknown: bool) -> GenotypeTable:
    """Rows naming genes outside `known_genes`: one error listing them, or dropped and counted on opt-in."""
    table.stats.update(genes_checked=known_genes is not None, unknown_genes=0)
    if known_genes is None:
        count_drop(table.stats, "unknown", 0)
        return table
    known = known_genes if isinstance(known_genes, (set, frozenset, dict)) else set(known_genes)
    unknown_gene = np.array([g not in known for g in table.gene_names.tolist()] + [False], dtype=bool)  # [G + 1]
    flags = unknown_gene[table.genes]  # [N, K]; code -1 -> the final False
    bad_rows = flags.any(axis=1)
    if not bad_rows.any():
        count_drop(table.stats, "unknown", 0)
        return table
    codes = table.genes[flags]  # row-major: file order
    rows = np.nonzero(flags)[0]
    first_codes, first_at = np.unique(codes, return_index=True)
    order = np.argsort(first_at, kind="stable")  # unknown genes in order of first appearance
    table.stats["unknown_genes"] = len(first_codes)
    if not drop_unknown:
        shown = []
        for code, at in zip(first_codes[order][:5], first_at[order][:5]):
            path, line = table.where(int(rows[at]))
            place = f"{table.unit} {line}" if len(table.files) == 1 else f"{Path(path).name} {table.unit} {line}"
            shown.append(f"{table.gene_names[code]} ({place})")
        more = f" and {len(first_codes) - 5} more" if len(first_codes) > 5 else ""
        raise GenotypeFileError(
            table.path, f"{len(first_codes)} genes not in the hierarchy, in {int(bad_rows.sum())} rows: "
                        f"{', '.join(shown)}{more} (pass drop_unknown=True to drop these rows)")
    return drop_rows(table, bad_rows, "unknown")


def finish(table: GenotypeTable, required: Sequence[str], known_genes: Collection[str] | None,
           drop_unknown: bool, drop_missing: bool) -> GenotypeTable:
    """The steps every reader ends with: required phenotypes present, genes known, final counts."""
    table = check_missing(table, required, drop_missing)
    table = check_known(table, known_genes, drop_unknown)
    table.stats["missing_values"] = {c: int(table.data[c].isna().sum()) for c in table.phenotypes}
    table.stats["rows"] = len(table)
    return table

