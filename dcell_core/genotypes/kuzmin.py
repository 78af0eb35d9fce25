"""Kuzmin et al. 2018 (Science 360:eaao1729, Data S1) and 2020 (Science 368:eaaz5667, Table S1) digenic and
trigenic release tables: tab-separated text or .xlsx (title rows above the header are skipped), 12 columns,
read unchanged, one file or several in order.

Every query strain is a double mutant `ORF1+ORF2_suffix`; in the digenic control screens one of the two is the
neutral hoΔ marker (YDL227C). A row's genotype is the query's genes plus the array's gene, minus the neutral
marker genes: digenic rows become 2-gene and trigenic rows 3-gene genotypes. Counted in the stats: rows whose
genotype lost a marker gene, rows left without any gene (dropped), rows per combined mutant type and number of
genes, rows dropped by the `Combined mutant type` filter.
"""
from __future__ import annotations

from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import pandas as pd

from .config import DEFAULT_NEUTRAL_GENES
from .strains import StrainBook
from .table import GenotypeTable, Interner, build_table, count_drop, finish
from .textio import (ReleaseRows, canonical_header, is_xlsx, read_text_chunks, read_text_header,
                     read_xlsx_chunks)

KUZMIN_QUERY, KUZMIN_ARRAY = "Query strain ID", "Array strain ID"
KUZMIN_TEXT_COLUMNS = {  # our name -> release header
    "query_strain": KUZMIN_QUERY,
    "query_allele_name": "Query allele name",
    "array_strain": KUZMIN_ARRAY,
    "array_allele_name": "Array allele name",
    "mutant_type": "Combined mutant type",
}
KUZMIN_PHENOTYPE_COLUMNS = {  # our name -> release header
    "epsilon_raw": "Raw genetic interaction score (epsilon)",
    "epsilon_adjusted": "Adjusted genetic interaction score (epsilon or tau)",
    "pvalue": "P-value",
    "query_fitness": "Query single/double mutant fitness",
    "array_fitness": "Array single mutant fitness",
    "fitness": "Double/triple mutant fitness",
    "fitness_std": "Double/triple mutant fitness standard deviation",
}
_TEXT_CHUNK_ROWS = 1_000_000
_XLSX_CHUNK_ROWS = 200_000


def kuzmin_phenotype_column(name: str) -> str:
    if name not in KUZMIN_PHENOTYPE_COLUMNS:
        raise ValueError(f"unknown Kuzmin phenotype {name!r}; choose one of {sorted(KUZMIN_PHENOTYPE_COLUMNS)}")
    return name


def _sga_hint(header: set) -> str:
    if canonical_header("Arraytype/Temp") in header:
        return "; this is a Costanzo 2016 SGA table: read it with source sga"
    return ""


def read_kuzmin(
    path: str | Path | Sequence[str | Path],
    known_genes: Collection[str] | None = None,
    phenotype: str = "fitness",
    drop_unknown: bool = False,
    drop_missing: bool = False,
    *,
    neutral_genes: Sequence[str] = DEFAULT_NEUTRAL_GENES,
    mutant_types: Sequence[str] | None = None,
    chunk_rows: int | None = None,
) -> GenotypeTable:
    """Read Kuzmin 2018 / 2020 tables (.tsv / .txt tab-separated, or .xlsx), in order.

    Columns: epsilon_raw, epsilon_adjusted, pvalue, query_fitness, array_fitness, fitness, fitness_std
    (float64); query_strain, array_strain, mutant_type. `neutral_genes` are removed from every genotype;
    `mutant_types` (None = all) keeps rows of those combined mutant types (each must occur in the files).
    """
    target = kuzmin_phenotype_column(phenotype)
    files = [str(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
    rows = _KuzminRows()
    for index, file in enumerate(files):
        rows.read_file(index, file, chunk_rows)
    arrays, stats = rows.concatenated(), rows.stats
    table = _table(files, rows, arrays, stats, set(neutral_genes), mutant_types)
    return finish(table, [target], known_genes, drop_unknown, drop_missing)


class _KuzminRows(ReleaseRows):
    TEXT, NUMERIC = KUZMIN_TEXT_COLUMNS, KUZMIN_PHENOTYPE_COLUMNS
    EMPTY_TYPES = {"file": np.int16, "line": np.int64, "query_strain": np.int32, "array_strain": np.int32,
                   "mutant_type": np.int16}

    def __init__(self) -> None:
        super().__init__()
        self.genes = Interner()
        self.strains = StrainBook(self.genes, multi=True, width=2)
        self.mutant_types = Interner()

    def read_file(self, index: int, path: str, chunk_rows: int | None) -> None:
        wanted = {**KUZMIN_TEXT_COLUMNS, **KUZMIN_PHENOTYPE_COLUMNS}
        text, numeric = list(KUZMIN_TEXT_COLUMNS), list(KUZMIN_PHENOTYPE_COLUMNS)
        if is_xlsx(path):
            self.unit = "row"
            chunks = read_xlsx_chunks(path, wanted, text, numeric, chunk_rows or _XLSX_CHUNK_ROWS, hint=_sga_hint)
        else:
            header_line, columns = read_text_header(path, wanted, title_rows=3, hint=_sga_hint)
            chunks = read_text_chunks(path, header_line, columns, text, numeric, chunk_rows or _TEXT_CHUNK_ROWS)
        self.read_chunks(index, path, chunks)

    def add_chunk(self, index: int, path: str, chunk: pd.DataFrame, lines: np.ndarray) -> None:
        text, values, lines, error = self.parse(path, chunk, lines)
        codes, categories = text["mutant_type"]
        if (codes < 0).any():
            raise error(int(np.argmax(codes < 0)), f"empty {KUZMIN_TEXT_COLUMNS['mutant_type']}", "")
        lookup = np.array([self.mutant_types.code(c) for c in categories] + [-1], dtype=np.int16)
        self.append({
            "file": np.full(len(lines), index, dtype=np.int16), "line": lines,
            "query_strain": self.strains.codes(*text["query_strain"], KUZMIN_QUERY, error),
            "array_strain": self.strains.codes(*text["array_strain"], KUZMIN_ARRAY, error),
            "mutant_type": lookup[codes],
            **values,
        })


def _table(files: list[str], rows: _KuzminRows, arrays: dict[str, np.ndarray], stats: dict, neutral: set[str],
           mutant_types: Sequence[str] | None) -> GenotypeTable:
    names = np.asarray(rows.genes.names, dtype=object)
    codes = np.concatenate([rows.strains.orf_matrix(arrays["query_strain"]),
                            rows.strains.orf_matrix(arrays["array_strain"])], axis=1)  # [N, 4]
    is_neutral = np.array([g in neutral for g in names.tolist()] + [False], dtype=bool)  # [G + 1]
    marked = is_neutral[codes]
    stats["neutral_marker_rows"] = int(marked.any(axis=1).sum())  # genotypes that lost a marker gene
    codes = np.where(marked, -1, codes)
    type_names = list(rows.mutant_types.names)
    data = pd.DataFrame({
        "file": arrays["file"], "line": arrays["line"],
        **{name: arrays[name] for name in KUZMIN_PHENOTYPE_COLUMNS},
        "query_strain": pd.Categorical.from_codes(arrays["query_strain"], categories=list(rows.strains.ids.names)),
        "array_strain": pd.Categorical.from_codes(arrays["array_strain"], categories=list(rows.strains.ids.names)),
        "mutant_type": pd.Categorical.from_codes(arrays["mutant_type"], categories=type_names),
    })
    table = build_table(files, names, codes, data, tuple(KUZMIN_PHENOTYPE_COLUMNS), stats, rows.unit)
    named = (codes >= 0).sum(axis=1)
    stats["same_orf_rows"] = int((table.gene_counts < named).sum())  # a gene in both query and array
    stats["rows_by_mutant_type"] = _order_counts(table)
    empty = table.gene_counts == 0
    count_drop(stats, "neutral_only", int(empty.sum()))
    table = table.take(~empty) if empty.any() else table
    if mutant_types is not None:
        absent = [t for t in mutant_types if t not in type_names]
        if absent:
            raise ValueError(f"mutant_types: {absent} occur in no row of {', '.join(files)} (found {type_names})")
        keep = table.data["mutant_type"].isin(list(mutant_types)).to_numpy()
        count_drop(stats, "mutant_type", int((~keep).sum()))
        table = table.take(keep) if not keep.all() else table
    else:
        count_drop(stats, "mutant_type", 0)
    return table


def _order_counts(table: GenotypeTable) -> dict:
    """{combined mutant type: {genes in the genotype: rows}} after removing the marker genes."""
    frame = pd.DataFrame({"type": table.data["mutant_type"].astype(str).to_numpy(), "genes": table.gene_counts})
    counts = frame.groupby(["type", "genes"]).size()
    out: dict = {}
    for (kind, genes), n in counts.items():
        out.setdefault(kind, {})[int(genes)] = int(n)
    return out
