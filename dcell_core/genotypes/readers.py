"""Readers for genotype tables: the Costanzo 2016 SGA release and a generic CSV / TSV / Parquet table.

Both return a `GenotypeTable`: one row per measured genotype, `genes` = the tuple of perturbed ORFs (sorted,
distinct), one float column per phenotype and `line` = where the row sits in the file. Bad input raises ONE
`GenotypeFileError` naming the file, the line (1-based as an editor counts, header = line 1; Parquet: the
1-based data row) and the offending value. Nothing is padded or replaced by a default: rows are dropped only
on explicit opt-in (`drop_unknown`, `drop_missing`) and every drop is counted in `GenotypeTable.stats`.
Line numbers assume one record per line (no quoted newlines), which holds for both formats.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import pandas as pd

# Costanzo et al. 2016 (Science 353:aaf1420) pair-wise release: SGA_ExE.txt, SGA_NxN.txt, SGA_ExN_NxE.txt.
SGA_QUERY, SGA_ARRAY = "Query Strain ID", "Array Strain ID"
SGA_PHENOTYPE_COLUMNS = {  # our name -> release header
    "epsilon": "Genetic interaction score (ε)",
    "pvalue": "P-value",
    "smf_query": "Query single mutant fitness (SMF)",
    "smf_array": "Array SMF",
    "dmf": "Double mutant fitness",
    "dmf_std": "Double mutant fitness standard deviation",
}
SGA_PHENOTYPE_ALIASES = {"fitness": "dmf"}  # config name "fitness" = the double mutant fitness
MISSING_TOKENS = frozenset({"", "NA", "NaN", "nan", "N/A"})  # cells read as "no measurement"
_ORF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.\-]*$"  # YAL001C, YDR374W-A, Q0045; no spaces, no underscore
TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}


class GenotypeFileError(ValueError):
    """Bad genotype input; the message names the file, the line (or Parquet row) and the offending value."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None, value: object = None,
                 unit: str = "line") -> None:
        self.path, self.line, self.value = str(path), line, value
        where = str(path) if line is None else f"{path}, {unit} {line}"
        super().__init__(f"{where}: {problem}" + ("" if value is None else f": {value!r}"))


@dataclass(frozen=True)
class GenotypeTable:
    path: str
    frame: pd.DataFrame  # columns: genes (tuple[str, ...]), line (int), one float64 column per phenotype
    phenotypes: tuple[str, ...]  # phenotype column names in `frame`
    stats: dict = field(default_factory=dict)  # rows read, blank lines, drops and their reasons

    def __len__(self) -> int:
        return len(self.frame)


def sga_phenotype_column(name: str) -> str:
    """Map a configured SGA phenotype name ("fitness", "epsilon", ...) to the reader's column name."""
    column = SGA_PHENOTYPE_ALIASES.get(name, name)
    if column not in SGA_PHENOTYPE_COLUMNS:
        valid = sorted(SGA_PHENOTYPE_COLUMNS) + sorted(SGA_PHENOTYPE_ALIASES)
        raise ValueError(f"unknown SGA phenotype {name!r}; choose one of {valid}")
    return column


def read_sga(
    path: str | Path,
    known_genes: Collection[str] | None = None,
    phenotype: str = "fitness",
    drop_unknown: bool = False,
    drop_missing: bool = False,
) -> GenotypeTable:
    """Read a Costanzo 2016 pair-wise SGA table (tab-separated, release headers).

    Each row becomes the double mutant (query ORF, array ORF); the ORF is the part of the strain id before
    its first underscore (`YAL002W_tsq508` -> YAL002W). A row whose two strains disrupt the same ORF becomes
    a one-gene genotype, counted in stats["same_orf_rows"]. Returns columns smf_query, smf_array, dmf,
    dmf_std, epsilon, pvalue; `phenotype` (e.g. "fitness" = dmf) must be present in every kept row, the
    other columns may be empty (NaN, counted in stats["missing_values"]).
    """
    target = sga_phenotype_column(phenotype)
    raw, loc = _read_raw(path, sep="\t")
    _require_columns(raw, [SGA_QUERY, SGA_ARRAY, *SGA_PHENOTYPE_COLUMNS.values()], loc)
    raw, stats = _drop_blank_rows(raw, loc)
    query = _strain_orfs(raw[SGA_QUERY], SGA_QUERY, loc)
    array = _strain_orfs(raw[SGA_ARRAY], SGA_ARRAY, loc)
    values = {name: _numeric_column(raw[header], header, loc) for name, header in SGA_PHENOTYPE_COLUMNS.items()}
    lo, hi = np.minimum(query, array), np.maximum(query, array)  # canonical (sorted) gene order
    same = lo == hi
    genes = [(a,) if s else (a, b) for a, b, s in zip(lo.tolist(), hi.tolist(), same.tolist())]
    stats["same_orf_rows"] = int(same.sum())
    frame = pd.DataFrame({"genes": genes, "line": loc.lines(raw.index), **values})
    frame = _finish(frame, [target], known_genes, drop_unknown, drop_missing, loc, stats)
    return GenotypeTable(str(path), frame, tuple(SGA_PHENOTYPE_COLUMNS), stats)


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
    raw, loc = _read_raw(path, sep=_separator_for(path))
    _require_columns(raw, [genes_column, *names], loc)
    raw, stats = _drop_blank_rows(raw, loc)
    genes = _gene_lists(raw[genes_column], genes_column, separator, loc)
    values = {name: _numeric_column(raw[name], name, loc) for name in names}
    frame = pd.DataFrame({"genes": genes, "line": loc.lines(raw.index), **values})
    frame = _finish(frame, list(names), known_genes, drop_unknown, drop_missing, loc, stats)
    return GenotypeTable(str(path), frame, names, stats)


# ---- shared steps ------------------------------------------------------------------------------------------
class _Locator:
    """Turns a 0-based data row index into the position a person finds in the file."""

    def __init__(self, path: str | Path, parquet: bool) -> None:
        self.path, self.parquet = path, parquet
        self.unit, self.first = ("row", 1) if parquet else ("line", 2)  # text: header is line 1

    def lines(self, index: pd.Index) -> np.ndarray:
        return np.asarray(index, dtype=np.int64) + self.first

    def error(self, row: int, problem: str, value: object = None) -> GenotypeFileError:
        return GenotypeFileError(self.path, problem, int(row) + self.first, value, self.unit)


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


def _read_raw(path: str | Path, sep: str | None) -> tuple[pd.DataFrame, _Locator]:
    """Every cell as a string (text) or its stored type (Parquet); index i = data row i."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"genotype file not found: {path}")
    if sep is None:
        return pd.read_parquet(path).reset_index(drop=True), _Locator(path, parquet=True)
    quoting = csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE  # TSV releases never quote
    try:  # re-raised with the file name; pandas' own message keeps its line number
        raw = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False,
                          skip_blank_lines=False, quoting=quoting, encoding="utf-8")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise GenotypeFileError(path, f"cannot parse as {'CSV' if sep == ',' else 'TSV'} ({exc})") from exc
    return raw, _Locator(path, parquet=False)


def _require_columns(raw: pd.DataFrame, required: Sequence[str], loc: _Locator) -> None:
    missing = [c for c in required if c not in raw.columns]
    if missing:
        have = ", ".join(repr(c) for c in raw.columns)
        raise GenotypeFileError(loc.path, f"missing column {missing[0]!r} (header has {have})",
                                None if loc.parquet else 1)


def _drop_blank_rows(raw: pd.DataFrame, loc: _Locator) -> tuple[pd.DataFrame, dict]:
    """Fully empty text lines carry no record: skip them (line numbers stay right) and count them."""
    stats: dict = {"rows_read": len(raw), "blank_lines": 0}
    if loc.parquet or raw.empty:
        return raw, stats
    blank = raw.eq("").all(axis=1).to_numpy()
    stats["blank_lines"] = int(blank.sum())
    return raw[~blank], stats


def _strain_orfs(column: pd.Series, header: str, loc: _Locator) -> np.ndarray:
    """ORF part of SGA strain ids ('YAL002W_tsq508' -> 'YAL002W'); object array [N]."""
    parts = column.astype(str).str.strip().str.partition("_")
    orf, underscore, allele = parts[0], parts[1], parts[2]
    bad = ((underscore == "") | (allele == "") | ~orf.str.match(_ORF_PATTERN)).to_numpy()
    if bad.any():
        row = column.index[int(np.argmax(bad))]
        raise loc.error(row, f"malformed {header} (expected ORF_allele such as YAL002W_tsq508)", column[row])
    return orf.to_numpy(dtype=object)


def _gene_lists(column: pd.Series, header: str, separator: str, loc: _Locator) -> list[tuple[str, ...]]:
    """Split each cell into a sorted tuple of distinct ORFs; empty lists, names or repeats are errors."""
    out: list[tuple[str, ...]] = []
    for row, cell in zip(column.index, column.tolist()):  # per row: an error names the row it found
        if not isinstance(cell, str):
            raise loc.error(row, f"column {header!r} must hold text, found {type(cell).__name__}", cell)
        if cell.strip() == "":
            raise loc.error(row, f"empty gene list in column {header!r}", cell)
        names = [g.strip() for g in cell.split(separator)]
        if any(g == "" for g in names):
            raise loc.error(row, f"empty gene name in column {header!r} (separator {separator!r})", cell)
        if len(set(names)) != len(names):
            raise loc.error(row, f"gene listed twice in column {header!r}", cell)
        out.append(tuple(sorted(names)))
    return out


def _numeric_column(column: pd.Series, header: str, loc: _Locator) -> np.ndarray:
    """float64 [N]; missing tokens -> NaN (checked later), anything else non-numeric or infinite -> error."""
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64)
        bad = np.isinf(values)
    else:
        text = column.astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        bad = (np.isnan(values) & ~text.isin(MISSING_TOKENS).to_numpy()) | np.isinf(values)
    if bad.any():
        row = column.index[int(np.argmax(bad))]
        raise loc.error(row, f"non-numeric value in column {header!r}", column[row])
    return values


def _finish(frame: pd.DataFrame, required: Sequence[str], known_genes: Collection[str] | None,
            drop_unknown: bool, drop_missing: bool, loc: _Locator, stats: dict) -> pd.DataFrame:
    frame = _check_missing(frame, required, drop_missing, loc, stats)
    frame = _check_unknown(frame, known_genes, drop_unknown, loc, stats)
    stats["missing_values"] = {c: int(frame[c].isna().sum()) for c in frame.columns.drop(["genes", "line"])}
    stats["rows"] = len(frame)
    return frame.reset_index(drop=True)


def _check_missing(frame: pd.DataFrame, required: Sequence[str], drop_missing: bool, loc: _Locator,
                   stats: dict) -> pd.DataFrame:
    """Rows with no value in a required phenotype: one error, or dropped and counted on opt-in."""
    missing = frame[list(required)].isna().any(axis=1).to_numpy()
    stats["dropped_missing"] = 0
    if not missing.any():
        return frame
    if not drop_missing:
        first = int(np.argmax(missing))
        column = next(c for c in required if np.isnan(frame[c].iat[first]))
        raise GenotypeFileError(
            loc.path, f"no value in column {column!r} ({int(missing.sum())} rows lack a required phenotype; "
                      f"pass drop_missing=True to drop them)", int(frame["line"].iat[first]), None, loc.unit)
    stats["dropped_missing"] = int(missing.sum())
    return frame[~missing]


def _check_unknown(frame: pd.DataFrame, known_genes: Collection[str] | None, drop_unknown: bool, loc: _Locator,
                   stats: dict) -> pd.DataFrame:
    """Rows naming genes outside `known_genes`: one error listing them, or dropped and counted on opt-in."""
    stats.update(genes_checked=known_genes is not None, unknown_genes=0, dropped_unknown=0)
    if known_genes is None:
        return frame
    known = known_genes if isinstance(known_genes, (set, frozenset, dict)) else set(known_genes)
    flat = frame["genes"].explode()  # one entry per gene, index = row label of `frame`, in file order
    unknown = ~flat.isin(known).to_numpy()
    if not unknown.any():
        return frame
    hits = pd.DataFrame({"gene": flat[unknown].to_numpy(), "row": flat.index[unknown]})
    firsts = hits.drop_duplicates("gene")  # first row naming each unknown gene
    bad_rows = hits["row"].unique()
    stats.update(unknown_genes=len(firsts), dropped_unknown=len(bad_rows))
    if not drop_unknown:
        shown = ", ".join(f"{g} ({loc.unit} {frame.at[r, 'line']})" for g, r in firsts.head(5).itertuples(False))
        more = f" and {len(firsts) - 5} more" if len(firsts) > 5 else ""
        raise GenotypeFileError(
            loc.path, f"{len(firsts)} genes not in the hierarchy, in {len(bad_rows)} rows: {shown}{more} "
                      f"(pass drop_unknown=True to drop these rows)")
    return frame.drop(index=bad_rows)
