"""Genotypes to predict, from the command line or a table file, and the table of predictions written back.

Input files follow the genotype table convention of the training data (docs/genotypes.md): a `genes` column of
ORFs joined by '+' ("YAL001C+YBR002W"), CSV or TSV by extension; other columns are copied to the output.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from dcell_core.fileio import atomic_write_bytes
from dcell_core.genotypes.readers import TEXT_SEPARATORS, GenotypeFileError, _gene_lists, _separator_for, read_rows
from dcell_core.serving.inference import PredictInputError, Subsystem


def parse_gene_list(text: str) -> tuple[str, ...]:
    """'YAL001C,YBR001C' -> ('YAL001C', 'YBR001C'); empty names and repeats are errors."""
    names = [g.strip() for g in text.split(",")]
    if any(not g for g in names):
        raise PredictInputError(f"--genes {text!r}: empty gene name (give ORFs separated by commas)")
    if len(set(names)) != len(names):
        raise PredictInputError(f"--genes {text!r}: a gene is listed twice")
    return tuple(names)


def read_genotypes(path: Path, genes_column: str = "genes",
                   separator: str = "+") -> tuple[pd.DataFrame, list[int], list[tuple[str, ...]]]:
    """(the file's rows as text, blank lines dropped; each row's line in the file; each row's genes)."""
    if _separator_for(path) is None:
        raise GenotypeFileError(path, "prediction input must be a text table (.csv, .tsv, .tab, .txt)")
    if not Path(path).is_file():
        raise PredictInputError(f"--input {path}: {'not a file' if Path(path).exists() else 'no such file'}")
    try:
        raw, lines, unit, _ = read_rows(path, [genes_column])
    except pd.errors.EmptyDataError as e:
        raise PredictInputError(f"--input {path}: empty file (expected a header line with a {genes_column!r} "
                                "column)") from e

    def error(row: int, problem: str, value: object = None) -> GenotypeFileError:
        return GenotypeFileError(path, problem, int(lines[row]), value, unit)

    genes = [tuple(g) for g in _gene_lists(raw[genes_column], genes_column, separator, error)]
    return raw.reset_index(drop=True), lines.tolist(), genes


def output_separator(path: Path) -> str:
    ext = Path(path).suffix.lower()
    if ext not in TEXT_SEPARATORS:
        raise PredictInputError(f"--output {path}: use a .csv or .tsv file name")
    return TEXT_SEPARATORS[ext]


def check_output(path: Path) -> None:
    """A bad --output (extension, missing directory) fails before any work."""
    output_separator(path)
    if not Path(path).absolute().parent.is_dir():
        raise PredictInputError(f"--output {path}: directory {Path(path).absolute().parent} does not exist")


def predictions_table(rows: pd.DataFrame, predictions: Sequence[float | None], unknown: Sequence[Sequence[str]],
                      subsystems: Sequence[Sequence[Subsystem]] | None, k: int) -> pd.DataFrame:
    """The input rows plus `prediction` (empty where skipped), `unknown_genes`, and per rank i <= k
    `subsystem_i`, `subsystem_i_name`, `subsystem_i_change`."""
    out = rows.copy()
    out["prediction"] = [float("nan") if p is None else float(p) for p in predictions]
    if any(unknown):
        out["unknown_genes"] = ["+".join(u) for u in unknown]
    if subsystems is not None:
        for i in range(k):
            ranked = [s[i] if len(s) > i else None for s in subsystems]
            out[f"subsystem_{i + 1}"] = [s.term if s else "" for s in ranked]
            out[f"subsystem_{i + 1}_name"] = [s.name if s else "" for s in ranked]
            out[f"subsystem_{i + 1}_change"] = [s.change if s else float("nan") for s in ranked]
    return out


def write_table(table: pd.DataFrame, path: Path) -> None:
    """CSV/TSV written atomically; floats with all the digits of their value (repr), missing as empty."""
    text = table.to_csv(sep=output_separator(path), index=False, na_rep="")
    atomic_write_bytes(path, text.encode())


def format_subsystems(subsystems: Sequence[Subsystem]) -> list[str]:
    width = max((len(s.name) for s in subsystems), default=0)
    return [f"  {i + 1:2d}. {s.term}  {s.name:<{width}}  change {s.change:.4f}" for i, s in enumerate(subsystems)]
