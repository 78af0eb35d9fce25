"""Readers: Costanzo 2016 SGA tables and generic CSV / TSV / Parquet tables, on small hand-written files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from dcell_core.genotypes import GenotypeFileError, read_sga, read_table
from dcell_core.ontology.hierarchy import Hierarchy

DATA = Path(__file__).parent / "data" / "genotypes"


@pytest.fixture(scope="module")
def genes() -> dict[str, int]:
    spec = json.loads((DATA / "toy_hierarchy.json").read_text())
    return Hierarchy.from_mappings(spec["children"], spec["direct_genes"], spec["names"]).gene_index


def _error(call, *args, **kwargs) -> GenotypeFileError:
    with pytest.raises(GenotypeFileError) as info:
        call(*args, **kwargs)
    assert isinstance(info.value, ValueError)
    return info.value


# ---- SGA ---------------------------------------------------------------------------------------------------
def test_sga_rows_genes_lines_and_values(genes):
    table = read_sga(DATA / "sga_small.txt", genes)
    frame = table.frame
    # sorted ORF tuples; line 5 of the file is blank; line 7 crosses two alleles of YFL001W -> one gene
    assert frame["genes"].tolist() == [
        ("YAL001C", "YAL002W"), ("YAL002W", "YBL001C"), ("YDL001W", "YDL002C"), ("YEL001C", "YFL003W"),
        ("YFL001W",)]
    assert frame["line"].tolist() == [2, 3, 4, 6, 7]
    assert frame["dmf"].tolist() == [0.7319, 0.4266, 0.9829, 0.7330, 0.8018]
    assert frame["epsilon"].tolist() == [-0.0348, -0.3529, 0.0412, -0.1220, 0.0010]
    assert frame["smf_query"].iloc[0] == 0.8285 and frame["smf_array"].iloc[0] == 0.9254
    assert frame["dmf_std"].iloc[1] == 0.0790
    assert math.isnan(frame["pvalue"].iloc[4]) and frame["pvalue"].iloc[0] == 0.005042
    assert table.stats["blank_lines"] == 1 and table.stats["same_orf_rows"] == 1
    assert table.stats["missing_values"]["pvalue"] == 1 and table.stats["rows"] == 5


def test_sga_malformed_strain_id_names_file_line_value(genes):
    err = _error(read_sga, DATA / "sga_bad_strain.txt", genes)
    assert (err.line, err.value) == (4, "YDL002C-dma45")
    assert "sga_bad_strain.txt" in str(err) and "line 4" in str(err) and "YDL002C-dma45" in str(err)
    assert "Array Strain ID" in str(err)


def test_sga_non_numeric_value_names_file_line_value(genes):
    err = _error(read_sga, DATA / "sga_bad_value.txt", genes)
    assert (err.line, err.value) == (5, "0.73x")
    assert "sga_bad_value.txt, line 5" in str(err) and "Double mutant fitness" in str(err)


def test_sga_unknown_genes_error_lists_them(genes):
    err = _error(read_sga, DATA / "sga_unknown_genes.txt", genes)
    text = str(err)
    assert "sga_unknown_genes.txt" in text and "2 genes not in the hierarchy, in 2 rows" in text
    assert "YZZ999W (line 3)" in text and "YQQ001C (line 5)" in text and "drop_unknown=True" in text


def test_sga_drop_unknown_drops_and_counts(genes):
    table = read_sga(DATA / "sga_unknown_genes.txt", genes, drop_unknown=True)
    assert table.frame["line"].tolist() == [2, 4, 6]
    assert table.stats["dropped_unknown"] == 2 and table.stats["unknown_genes"] == 2 and len(table) == 3


def test_sga_missing_target_is_an_error_unless_dropped(genes):
    err = _error(read_sga, DATA / "sga_small.txt", genes, phenotype="pvalue")
    assert err.line == 7 and "'pvalue'" in str(err)
    table = read_sga(DATA / "sga_small.txt", genes, phenotype="pvalue", drop_missing=True)
    assert table.frame["line"].tolist() == [2, 3, 4, 6] and table.stats["dropped_missing"] == 1


def test_sga_unknown_phenotype_name(genes):
    with pytest.raises(ValueError, match="unknown SGA phenotype 'growth'"):
        read_sga(DATA / "sga_small.txt", genes, phenotype="growth")


def test_sga_missing_column_names_header(tmp_path, genes):
    lines = (DATA / "sga_small.txt").read_text(encoding="utf-8").splitlines()
    cut = [line.split("\t") for line in lines]
    col = cut[0].index("P-value")
    bad = tmp_path / "no_pvalue.txt"
    bad.write_text("\n".join("\t".join(c[:col] + c[col + 1:]) for c in cut) + "\n", encoding="utf-8")
    err = _error(read_sga, bad, genes)
    assert err.line == 1 and "missing column 'P-value'" in str(err) and "no_pvalue.txt" in str(err)


def test_sga_without_gene_check_keeps_unknown_rows():
    table = read_sga(DATA / "sga_unknown_genes.txt")
    assert len(table) == 5 and table.stats["genes_checked"] is False


# ---- generic tables ----------------------------------------------------------------------------------------
EXPECTED_GENES = [("YAL001C",), ("YAL001C", "YAL002W"), ("YDL001W", "YDL002C", "YDL003W"), ("YHL001C",)]


def test_csv_table(genes):
    table = read_table(DATA / "table_small.csv", "fitness", genes)
    assert table.frame["genes"].tolist() == EXPECTED_GENES
    assert table.frame["fitness"].tolist() == [0.91, 0.70, 0.42, 0.99]
    assert table.frame["line"].tolist() == [2, 3, 4, 5]
    assert table.phenotypes == ("fitness",)


def test_tsv_and_parquet_read_like_csv(tmp_path, genes):
    rows = {"genes": ["YAL001C", "YAL002W+YAL001C", "YDL001W+YDL002C+YDL003W", "YHL001C"],
            "fitness": [0.91, 0.70, 0.42, 0.99]}
    pd.DataFrame(rows).to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    for name in ("t.tsv", "t.parquet"):
        table = read_table(tmp_path / name, "fitness", genes)
        assert table.frame["genes"].tolist() == EXPECTED_GENES, name
        assert table.frame["fitness"].tolist() == rows["fitness"], name


def test_parquet_errors_name_the_row(tmp_path, genes):
    pd.DataFrame({"genes": ["YAL001C", ""], "fitness": [0.9, 0.8]}).to_parquet(tmp_path / "bad.parquet")
    err = _error(read_table, tmp_path / "bad.parquet", "fitness", genes)
    assert (err.line, err.value) == (2, "") and "bad.parquet, row 2" in str(err)


def test_table_non_numeric_phenotype(genes):
    err = _error(read_table, DATA / "table_bad_value.tsv", "fitness", genes)
    assert (err.line, err.value) == (4, "high") and "table_bad_value.tsv, line 4" in str(err)


def test_table_empty_gene_list(genes):
    err = _error(read_table, DATA / "table_bad_empty_genes.csv", "fitness", genes)
    assert err.line == 3 and "empty gene list" in str(err) and "table_bad_empty_genes.csv" in str(err)


def test_table_missing_column(genes):
    err = _error(read_table, DATA / "table_missing_column.csv", "fitness", genes)
    assert err.line == 1 and "missing column 'fitness'" in str(err) and "'growth'" in str(err)


def test_table_missing_second_phenotype(genes):
    err = _error(read_table, DATA / "table_small.csv", ["fitness", "epsilon"], genes)
    assert err.line == 5 and "'epsilon'" in str(err)
    table = read_table(DATA / "table_small.csv", ["fitness", "epsilon"], genes, drop_missing=True)
    assert len(table) == 3 and table.stats["dropped_missing"] == 1


def test_table_unknown_genes(genes):
    err = _error(read_table, DATA / "table_unknown_genes.csv", "fitness", genes)
    assert "2 genes not in the hierarchy, in 2 rows" in str(err)
    assert "YNOPE1W (line 3)" in str(err) and "YNOPE2C (line 5)" in str(err)
    table = read_table(DATA / "table_unknown_genes.csv", "fitness", genes, drop_unknown=True)
    assert table.frame["line"].tolist() == [2, 4] and table.stats["dropped_unknown"] == 2


@pytest.mark.parametrize(
    "cell, problem",
    [("YAL001C++YAL002W", "empty gene name"), ("YAL001C+YAL001C", "gene listed twice"), ("  ", "empty gene list")],
)
def test_table_bad_gene_cells(tmp_path, genes, cell, problem):
    path = tmp_path / "cells.csv"
    path.write_text(f"genes,fitness\nYAL001C,0.9\nYAL002W,0.8\n{cell},0.5\n")
    err = _error(read_table, path, "fitness", genes)
    assert (err.line, err.value, problem in str(err)) == (4, cell, True)


def test_table_custom_separator_and_column(tmp_path, genes):
    path = tmp_path / "semi.csv"
    path.write_text("orfs,growth\nYAL001C;YBL002W,0.5\n")
    table = read_table(path, "growth", genes, genes_column="orfs", separator=";")
    assert table.frame["genes"].tolist() == [("YAL001C", "YBL002W")]


def test_unsupported_extension(tmp_path, genes):
    path = tmp_path / "t.xlsx"
    path.write_bytes(b"not a table")
    err = _error(read_table, path, "fitness", genes)
    assert "unsupported file type" in str(err) and err.value == ".xlsx"
