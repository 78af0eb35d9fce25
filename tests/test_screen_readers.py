"""Screen release readers on files written here in the exact release formats: Costanzo 2016 (SGA_*.txt: the ε
header, CRLF line ends, several files, mixed alleles and temperatures), Kuzmin 2018 (tab-separated, double-mutant
queries with the hoΔ marker) and Kuzmin 2020 (.xlsx with a title row); bad lines; the repeats policy; the
dataset cache key; the gene set of a source; the data configs and the `python -m dcell_core.genotypes` CLI."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, env_for, run_python
from openpyxl import Workbook

from dcell_core.fileio import CacheRebuiltWarning
from dcell_core.genotypes import (GenotypeConfig, GenotypeFileError, apply_repeats, genotype_genes,
                                  load_or_build_dataset, read_kuzmin, read_sga, read_source, validate_config)
from dcell_core.genotypes import cache as cache_mod
from dcell_core.genotypes import sources as sources_mod
from dcell_core.genotypes.strains import allele_class
from dcell_core.ontology.hierarchy import Hierarchy

SGA_HEADER = ["Query Strain ID", "Query allele name", "Array Strain ID", "Array allele name", "Arraytype/Temp",
              "Genetic interaction score (ε)", "P-value", "Query single mutant fitness (SMF)", "Array SMF",
              "Double mutant fitness", "Double mutant fitness standard deviation"]
KUZMIN_HEADER = ["Query strain ID", "Query allele name", "Array strain ID", "Array allele name",
                 "Combined mutant type", "Raw genetic interaction score (epsilon)",
                 "Adjusted genetic interaction score (epsilon or tau)", "P-value",
                 "Query single/double mutant fitness", "Array single mutant fitness", "Double/triple mutant fitness",
                 "Double/triple mutant fitness standard deviation"]
CLASS = {"sn": "deletion", "dma": "deletion", "tsq": "other", "tsa": "other", "damp": "damp"}


def write_tsv(path: Path, header: list[str], rows: list[list[str]], crlf: bool = True,
              title: str | None = None) -> Path:
    end = "\r\n" if crlf else "\n"
    lines = ([title] if title else []) + ["\t".join(header)] + ["\t".join(r) for r in rows]
    path.write_bytes((end.join(lines) + end).encode("utf-8"))
    return path


# ---- Costanzo 2016 -----------------------------------------------------------------------------------------
# (query strain, query allele, array strain, array allele, Arraytype/Temp, ε, p, query SMF, array SMF, DMF, std)
EXE = [
    ["YAL001C_tsq508", "tfc3-g349e", "YBL001C_tsa9", "ecm15-1", "TSA26", "-0.0348", "0.005042", "0.8285", "0.9254",
     "0.7319", "0.0102"],
    ["YAL001C_tsq508", "tfc3-g349e", "YBL002W_tsa10", "htb2-3", "TSA30", "0.0412", "0.21", "0.8000", "0.9900",
     "0.8010", "0.0311"],
]
NXN = [
    ["YAL002W_sn1026", "vps8", "YBL001C_dma1", "ecm15", "DMA30", "-0.3529", "0.000004", "0.8285", "0.9408", "0.4266",
     "0.0790"],
    ["YBL001C_sn77", "ecm15", "YAL002W_dma2", "vps8", "DMA30", "-0.2000", "0.001", "0.9408", "0.8285", "0.5200",
     "0.0500"],
    ["YAL002W_sn1026", "vps8", "YBL001C_dma1", "ecm15", "DMA26", "-0.1000", "0.01", "0.8100", "0.9408", "0.6600",
     "0.0400"],
    [""] * 11,
    ["YAL002W_sn1026", "vps8", "YAL002W_dma2", "vps8", "DMA30", "0.0010", "", "0.8285", "0.8285", "0.8018", "0.02"],
]
DAMP = [
    ["YEL001C_damp3", "irc22-damp", "YBL001C_dma1", "ecm15", "DMA30", "-0.1220", "0.0011", "0.9000", "0.9408",
     "0.7330", "0.0500"],
    ["YAL002W_sn1026", "vps8", "YFL003W_damp77", "msh4-damp", "DMA26", "0.0200", "0.3", "0.8100", "0.9500", "0.7900",
     "0.0100"],
    ["YAL001C_damp5", "tfc3-damp", "YBL001C_dma1", "ecm15", "DMA30", "-0.0500", "0.04", "0.7000", "0.9408", "0.6100",
     "0.0300"],
]


def _class(strain: str) -> str:
    suffix = strain.partition("_")[2]
    return next(c for prefix, c in sorted(CLASS.items(), key=lambda kv: -len(kv[0])) if suffix.startswith(prefix))


@pytest.fixture
def costanzo(tmp_path) -> list[Path]:
    return [write_tsv(tmp_path / "SGA_ExE.txt", SGA_HEADER, EXE), write_tsv(tmp_path / "SGA_NxN.txt", SGA_HEADER, NXN),
            write_tsv(tmp_path / "SGA_DAmP.txt", SGA_HEADER, DAMP)]


def _written_rows(paths: list[Path]) -> list[tuple[str, int, list[str]]]:
    """(file, line, cells) of every non-blank data row written, in file order."""
    spec = {"SGA_ExE.txt": EXE, "SGA_NxN.txt": NXN, "SGA_DAmP.txt": DAMP}
    return [(str(p), i + 2, row) for p in paths for i, row in enumerate(spec[p.name]) if row[0]]


def test_costanzo_files_read_in_order_with_alleles_temperatures_and_lines(costanzo):
    table = read_sga(costanzo)
    written = _written_rows(costanzo)
    frame = table.frame
    assert len(table) == len(written) and table.stats["blank_lines"] == 1
    assert list(zip(frame["file"], frame["line"])) == [(f, line) for f, line, _ in written]
    for (_, _, cells), (_, got) in zip(written, frame.iterrows()):
        genes = tuple(sorted({cells[0].split("_")[0], cells[2].split("_")[0]}))
        assert got["genes"] == genes
        assert (got["query_allele"], got["array_allele"]) == (_class(cells[0]), _class(cells[2]))
        assert (got["array_type"], got["temperature"]) == (cells[4][:3], int(cells[4][3:]))
        assert got["dmf"] == float(cells[9]) and got["query_strain"] == cells[0]
    assert table.stats["rows_by_file"] == {str(p): sum(f == str(p) for f, _, _ in written) for p in costanzo}
    assert table.stats["same_orf_rows"] == 1  # vps8 deletion query x vps8 deletion array: one gene
    temps = [int(c[4][3:]) for _, _, c in written]
    assert table.stats["rows_by_temperature"] == {t: temps.count(t) for t in sorted(set(temps))}
    no_p = [i for i, (_, _, c) in enumerate(written) if c[6] == ""]
    assert np.flatnonzero(frame["pvalue"].isna()).tolist() == no_p and table.stats["missing_values"]["pvalue"] == 1
    # `alleles` names the classes in gene order: the damp query YAL001C before the deletion array YBL001C, the
    # deletion query YAL002W before the damp array YFL003W, the deletion array YBL001C before the damp query YEL001C
    assert frame["alleles"].tolist()[-3:] == ["deletion+damp", "deletion+damp", "damp+deletion"]


@pytest.mark.parametrize("strain, allele, expected", [
    ("YAL001C_tsq508", "tfc3-g349e", "other"), ("YBL001C_tsa9", "ecm15-1", "other"),
    ("YAL002W_sn1026", "vps8", "deletion"), ("YBL001C_dma1", "ecm15", "deletion"),
    ("YEL001C_damp3", "irc22-damp", "damp"), ("YEL001C_x3", "irc22-DAmP", "damp"),
    ("YBL007C_x91", "sla1Δ", "deletion"), ("YBR001C_S12", "nth2-s1", "other"),
])
def test_allele_class_from_suffix_and_allele_name(strain, allele, expected):
    from dcell_core.genotypes.config import ALLELE_CLASSES
    assert ALLELE_CLASSES[allele_class(strain, allele)] == expected


def test_costanzo_allele_and_temperature_filters_count_their_drops(costanzo):
    written = _written_rows(costanzo)
    table = read_sga(costanzo, alleles=["deletion"])
    kept = [c for _, _, c in written if _class(c[0]) == _class(c[2]) == "deletion"]
    assert table.frame["query_strain"].tolist() == [c[0] for c in kept]
    assert table.stats["dropped_alleles"] == len(written) - len(kept)
    hot = read_sga(costanzo, alleles=["deletion", "damp", "other"], temperatures=[30])
    assert set(hot.data["temperature"]) == {30}
    assert hot.stats["dropped_temperature"] == sum(c[4].endswith("26") for _, _, c in written)
    with pytest.raises(ValueError, match=r"temperatures: \[37\] occur in no row .*found \[26, 30\]"):
        read_sga(costanzo, temperatures=[37])


def test_costanzo_singles_one_row_per_strain_and_temperature(costanzo):
    table = read_sga(costanzo, singles=True)
    written = _written_rows(costanzo)
    singles = table.frame[table.frame["array_strain"].isna()]
    expected: dict[tuple[str, int], list[float]] = {}
    for _, _, c in written:  # both sides of every row, in file order
        for strain, smf in ((c[0], c[7]), (c[2], c[8])):
            expected.setdefault((strain, int(c[4][3:])), []).append(float(smf))
    got = {(s, t): v for s, t, v in zip(singles["query_strain"], singles["temperature"], singles["dmf"])}
    assert list(got) == list(expected)  # order of first appearance
    assert all(got[k] == pytest.approx(np.mean(v)) for k, v in expected.items())
    assert table.stats["singles_added"] == len(expected)
    assert table.stats["singles_conflicting"] == sum(len(set(v)) > 1 for v in expected.values())
    assert all(len(g) == 1 for g in singles["genes"]) and singles["smf_query"].isna().all()
    with pytest.raises(ValueError, match="singles: single-mutant rows carry fitness only"):
        validate_config(GenotypeConfig(source="sga", path="x.txt", singles=True, phenotype="epsilon"))


def test_repeats_keep_counts_mixed_conditions_and_mean_averages(costanzo):
    table = read_sga(costanzo)
    groups: dict[tuple, list[int]] = {}
    for i, genes in enumerate(table.gene_tuples()):
        groups.setdefault(genes, []).append(i)
    repeated = {g: rows for g, rows in groups.items() if len(rows) > 1}
    # by hand: YAL002W+YBL001C three times (reciprocal crosses at 30 °C, once at 26 °C, all deletions);
    # YAL001C+YBL001C twice (ts alleles at 26 °C, a DAmP query x deletion array at 30 °C)
    assert sorted(repeated) == [("YAL001C", "YBL001C"), ("YAL002W", "YBL001C")]
    kept = apply_repeats(read_sga(costanzo), "keep")
    assert len(kept) == len(table)
    assert (kept.stats["repeated_genotypes"], kept.stats["repeated_rows"]) == (2, 5)
    assert kept.stats["repeats_mixing_temperature"] == 2 and kept.stats["repeats_mixing_alleles"] == 1
    mean = apply_repeats(read_sga(costanzo), "mean")
    assert len(mean) == len(groups) == mean.stats["averaged_genotypes"]
    assert mean.gene_tuples() == list(groups)  # order of first appearance
    for at, (genes, rows) in enumerate(groups.items()):
        assert mean.data["dmf"].iloc[at] == pytest.approx(table.data["dmf"].iloc[rows].mean())
        assert mean.data["measurements"].iloc[at] == len(rows)
        first = table.data[["file", "line"]].iloc[rows[0]]
        assert (mean.data["file"].iloc[at], mean.data["line"].iloc[at]) == tuple(first)
    # a gene set whose only p-value is missing stays missing; means skip missing values
    assert mean.data["pvalue"].isna().sum() == 1


def test_costanzo_bad_lines_name_file_line_and_value(tmp_path, costanzo):
    cases = [
        (4, 0, "YDL002C-dma45", "malformed Query Strain ID"),
        (3, 2, "YBL001C_", "malformed Array Strain ID"),
        (6, 9, "0.73x", "non-numeric value in column 'Double mutant fitness'"),
        (2, 4, "DMA-thirty", "malformed Arraytype/Temp"),
    ]
    for line, column, value, problem in cases:
        rows = [list(r) for r in NXN]
        rows[line - 2][column] = value
        bad = write_tsv(tmp_path / "SGA_bad.txt", SGA_HEADER, rows)
        with pytest.raises(GenotypeFileError) as info:
            read_sga([costanzo[0], bad])
        err = info.value
        assert (err.path, err.line, err.value) == (str(bad), line, value), problem
        assert f"SGA_bad.txt, line {line}" in str(err) and problem in str(err) and repr(value) in str(err)


def test_costanzo_bad_value_after_the_first_chunk_and_extra_field(tmp_path):
    rows = [list(NXN[0]) for _ in range(25)]
    rows[17][9] = "n/a?"
    bad = write_tsv(tmp_path / "SGA_NxN.txt", SGA_HEADER, rows)
    with pytest.raises(GenotypeFileError) as info:
        read_sga(bad, chunk_rows=5)  # the typed parse fails in the fourth chunk; the text pass names the line
    assert (info.value.line, info.value.value) == (19, "n/a?")
    rows = [list(NXN[0]) for _ in range(6)]
    spaced = [list(NXN[0]) for _ in range(7)]
    spaced[4][6] = " NA "  # refused by the fast parse, a missing value all the same: read on as text
    table = read_sga(write_tsv(tmp_path / "SGA_spaced.txt", SGA_HEADER, spaced), chunk_rows=2)
    assert np.isnan(table.data["pvalue"].to_numpy()).tolist() == [False] * 4 + [True, False, False]
    assert table.data["line"].tolist() == list(range(2, 9)) and table.data["dmf"].tolist() == [0.4266] * 7
    rows[3] = rows[3] + ["extra"]
    with pytest.raises(GenotypeFileError, match=r"SGA_long.txt, line 5: cannot parse .*Expected 11 fields"):
        read_sga(write_tsv(tmp_path / "SGA_long.txt", SGA_HEADER, rows))


def test_kuzmin_table_given_to_the_sga_reader_says_which_source(tmp_path):
    path = write_tsv(tmp_path / "k.tsv", KUZMIN_HEADER, [])
    with pytest.raises(GenotypeFileError, match="missing column 'Query Strain ID'.*read it with source kuzmin"):
        read_sga(path)


# ---- Kuzmin 2018 / 2020 ------------------------------------------------------------------------------------
KUZMIN = [
    ["YAL015C+YDL227C_tm461", "ntg1Δ+hoΔ", "YBL007C_dma91", "sla1Δ", "digenic", "0.007534", "0.007534", "4.50E-01",
     "", "0.962", "0.9695", "0.0465"],
    ["YAL015C+YDL227C_tm461", "ntg1Δ+hoΔ", "YBL023C_tsa111", "mcm2-1", "digenic", "0.005416", "0.005416",
     "4.65E-01", "0.95", "0.909", "0.9144", "0.0479"],
    ["YML107C+YDL227C_tm2550", "pml39Δ+hoΔ", "YBL007C_dma91", "sla1Δ", "digenic", "-0.02", "-0.02", "0.2", "0.97",
     "0.962", "0.91", "0.03"],
    [""] * 12,
    ["YAL015C+YML107C_tm2551", "ntg1Δ+pml39Δ", "YBL007C_dma91", "sla1Δ", "trigenic", "-0.1", "-0.08", "0.01",
     "0.5128", "0.962", "0.4", "0.02"],
    ["YAL015C+YML107C_tm2551", "ntg1Δ+pml39Δ", "YAL015C_dma5", "ntg1Δ", "trigenic", "0.01", "0.01", "0.5",
     "0.5128", "0.98", "0.49", "0.02"],
]
GREEK_HEADER = [h.replace("(epsilon)", "(ε)").replace("(epsilon or tau)", "(ε or τ)") for h in KUZMIN_HEADER]


def _expected_kuzmin(neutral=("YDL227C",)):
    out = []
    for i, row in enumerate(KUZMIN):
        if row[0]:
            genes = set(row[0].split("_")[0].split("+")) | {row[2].split("_")[0]}
            out.append((i + 2, tuple(sorted(genes - set(neutral))), row))
    return out


def _xlsx(path: Path, header: list[str], rows: list[list[str]], numbers: bool = True) -> Path:
    book = Workbook()
    sheet = book.active
    sheet.append(["Table S1. Raw genetic interaction dataset. Digenic and trigenic interaction scores."])
    sheet.append(header)
    for row in rows:
        cells = [None if c == "" else c for c in row]
        if numbers:
            cells = cells[:5] + [None if c is None else float(c) for c in cells[5:]]
        sheet.append(cells)
    book.save(path)
    return path


@pytest.mark.parametrize("header", [KUZMIN_HEADER, GREEK_HEADER], ids=["ascii", "greek"])
def test_kuzmin_tsv_markers_removed_digenic_two_trigenic_three_genes(tmp_path, header):
    table = read_kuzmin(write_tsv(tmp_path / "aao1729_Data_S1.tsv", header, KUZMIN))
    expected = _expected_kuzmin()
    frame = table.frame
    assert frame["genes"].tolist() == [g for _, g, _ in expected]
    assert frame["line"].tolist() == [line for line, _, _ in expected]
    assert frame["fitness"].tolist() == [float(r[10]) for _, _, r in expected]
    assert frame["epsilon_adjusted"].tolist() == [float(r[6]) for _, _, r in expected]
    assert frame["pvalue"].tolist() == [float(r[7]) for _, _, r in expected]
    assert math.isnan(frame["query_fitness"].iloc[0]) and frame["mutant_type"].iloc[-1] == "trigenic"
    assert table.stats["neutral_marker_rows"] == sum("YDL227C" in r[0] for _, _, r in expected)
    assert table.stats["same_orf_rows"] == 1  # ntg1Δ in the query and on the array: a 2-gene genotype
    assert table.stats["rows_by_mutant_type"] == {"digenic": {2: 3}, "trigenic": {3: 1, 2: 1}}
    assert table.stats["blank_lines"] == 1


def test_kuzmin_xlsx_with_title_row_reads_like_the_tsv(tmp_path):
    tsv = read_kuzmin(write_tsv(tmp_path / "k.tsv", KUZMIN_HEADER, KUZMIN))
    for numbers in (True, False):  # cells stored as numbers, or as text as some exports do
        xlsx = read_kuzmin(_xlsx(tmp_path / f"aaz5667-Table-S1-{numbers}.xlsx", KUZMIN_HEADER, KUZMIN, numbers))
        assert xlsx.gene_tuples() == tsv.gene_tuples()
        assert xlsx.data["line"].tolist() == [line + 1 for line in tsv.data["line"]]  # sheet rows: title first
        for name in tsv.phenotypes:
            np.testing.assert_array_equal(xlsx.data[name].to_numpy(), tsv.data[name].to_numpy())
    rows = [list(r) for r in KUZMIN]
    rows[4][10] = "0.4?"
    path = _xlsx(tmp_path / "bad.xlsx", KUZMIN_HEADER, rows, numbers=False)
    with pytest.raises(GenotypeFileError, match=r"bad.xlsx, row 7: non-numeric value in column "
                                                r"'Double/triple mutant fitness': '0.4\?'"):
        read_kuzmin(path)


def test_kuzmin_text_with_a_title_line_counts_lines_from_the_top(tmp_path):
    title = "Table S1. Raw genetic interaction dataset."
    table = read_kuzmin(write_tsv(tmp_path / "t.tsv", KUZMIN_HEADER, KUZMIN, title=title))
    assert table.data["line"].tolist() == [line + 1 for line, _, _ in _expected_kuzmin()]
    rows = [list(r) for r in KUZMIN]
    rows[1][9] = " NA "  # the typed parse refuses it: the rest is read as text, lines still counted from the top
    rows[4] = rows[4] + ["surplus"]
    with pytest.raises(GenotypeFileError, match=r"t2.tsv, line 7: cannot parse .*Expected 12 fields in line 7"):
        read_kuzmin(write_tsv(tmp_path / "t2.tsv", KUZMIN_HEADER, rows, title=title), chunk_rows=2)


def test_kuzmin_filters_and_markers(tmp_path):
    path = write_tsv(tmp_path / "k.tsv", KUZMIN_HEADER, KUZMIN)
    trigenic = read_kuzmin(path, mutant_types=["trigenic"])
    assert set(trigenic.data["mutant_type"]) == {"trigenic"} and trigenic.stats["dropped_mutant_type"] == 3
    with pytest.raises(ValueError, match=r"mutant_types: \['trigenc'\] occur in no row"):
        read_kuzmin(path, mutant_types=["trigenc"])
    unmarked = read_kuzmin(path, neutral_genes=[])
    assert unmarked.gene_tuples() == [g for _, g, _ in _expected_kuzmin(neutral=())]
    only_marker = [["YDL227C+YDL227C_tm1", "hoΔ+hoΔ", "YDL227C_dma3", "hoΔ", "digenic"] + ["0.1"] * 7]
    table = read_kuzmin(write_tsv(tmp_path / "ho.tsv", KUZMIN_HEADER, KUZMIN + only_marker))
    assert len(table) == len(_expected_kuzmin()) and table.stats["dropped_neutral_only"] == 1


@pytest.mark.parametrize("column, value, problem", [
    (0, "YAL015C+_tm461", "malformed Query strain ID"), (0, "YAL015C+YDL227C", "malformed Query strain ID"),
    (0, "YAL015C+YDL227C+YML107C_tm9", "malformed Query strain ID"), (2, "YBL007C dma91", "malformed Array strain ID"),
    (4, "", "empty Combined mutant type"), (11, "-", "non-numeric value"),
])
def test_kuzmin_bad_cells_name_file_line_value(tmp_path, column, value, problem):
    rows = [list(r) for r in KUZMIN]
    rows[4][column] = value
    with pytest.raises(GenotypeFileError) as info:
        read_kuzmin(write_tsv(tmp_path / "k.tsv", KUZMIN_HEADER, rows))
    assert (info.value.line, info.value.value) == (6, value) and problem in str(info.value)
    assert "k.tsv, line 6" in str(info.value)


# ---- through the config: sources, cache key, dataset, gene set ----------------------------------------------
def _toy(genes: list[str]) -> Hierarchy:
    half = len(genes) // 2
    return Hierarchy.from_mappings({"GO:0000001": ["GO:0000002", "GO:0000003"]},
                                   {"GO:0000002": genes[:half], "GO:0000003": genes[half:]})


def _all_sga_genes() -> list[str]:
    rows = EXE + NXN + DAMP
    return sorted({r[c].split("_")[0] for r in rows if r[0] for c in (0, 2)})


def test_dataset_with_repeats_mean_records_measurements_and_survives_the_cache(tmp_path, costanzo):
    toy = _toy(_all_sga_genes())
    cfg = GenotypeConfig(source="sga", path=[str(p) for p in costanzo], repeats="mean", val_fraction=0.0,
                         test_fraction=0.0)
    built = load_or_build_dataset(toy, cfg, tmp_path / "cache", tmp_path)
    hit = load_or_build_dataset(toy, cfg, tmp_path / "cache", tmp_path)
    table = read_sga(costanzo)
    assert built.meta["cache"] == "built" and hit.meta["cache"] == "hit"
    assert len(built) == len(set(table.gene_tuples())) and int(built.measurements.sum()) == len(table)
    np.testing.assert_array_equal(built.measurements, hit.measurements)
    keep = load_or_build_dataset(toy, dataclasses.replace(cfg, repeats="keep"), tmp_path / "cache", tmp_path)
    assert len(keep) == len(table) and keep.measurements is None
    assert keep.meta["stats"]["repeated_rows"] == built.meta["stats"]["repeated_rows"]


def _key(cfg, base_dir, toy):
    return cache_mod.cache_key(toy, sources_mod.describe_source(cfg, base_dir), {})


def test_cache_key_includes_every_reader_setting(tmp_path, costanzo):
    toy = _toy(["YAL001C", "YBL001C"])
    kuzmin = write_tsv(tmp_path / "k.tsv", KUZMIN_HEADER, KUZMIN)
    sga = GenotypeConfig(source="sga", path=[str(p) for p in costanzo])
    kz = GenotypeConfig(source="kuzmin", path=str(kuzmin))
    variants = [sga, kz,
                dataclasses.replace(sga, path=[str(p) for p in costanzo[:2]]),
                dataclasses.replace(sga, path=[str(p) for p in reversed(costanzo)]),
                dataclasses.replace(sga, alleles=["deletion", "other"]),
                dataclasses.replace(sga, temperatures=[26]),
                dataclasses.replace(sga, singles=True),
                dataclasses.replace(sga, repeats="mean"),
                dataclasses.replace(sga, drop_unknown=True),
                dataclasses.replace(kz, neutral_genes=[]),
                dataclasses.replace(kz, mutant_types=["digenic"]),
                dataclasses.replace(kz, phenotype="epsilon_adjusted")]
    keys = [_key(v, tmp_path, toy) for v in variants]
    assert len(set(keys)) == len(variants)
    same = [dataclasses.replace(sga, release="another publication note"),
            dataclasses.replace(sga, alleles=["other", "damp", "deletion"])]
    assert {_key(v, tmp_path, toy) for v in same} == {keys[0]}


def test_genotype_genes_follow_the_filters_and_are_cached(tmp_path, costanzo, monkeypatch):
    kuzmin = write_tsv(tmp_path / "k.tsv", KUZMIN_HEADER, KUZMIN)
    cfg = GenotypeConfig(source="kuzmin", path="k.tsv")
    assert genotype_genes(cfg, tmp_path) == {g for _, genes, _ in _expected_kuzmin() for g in genes}
    assert "YDL227C" not in genotype_genes(cfg, tmp_path)
    trigenic = dataclasses.replace(cfg, mutant_types=["trigenic"])
    assert genotype_genes(trigenic, tmp_path) == {"YAL015C", "YML107C", "YBL007C"}
    deletions = GenotypeConfig(source="sga", path=[str(p) for p in costanzo], alleles=["deletion"])
    assert genotype_genes(deletions, tmp_path) == {"YAL002W", "YBL001C"}
    cache = tmp_path / "cache"
    first = genotype_genes(cfg, tmp_path, cache)
    [stored] = (cache / "genotype_genes").iterdir()
    monkeypatch.setattr(sources_mod, "_read", lambda *a: pytest.fail("a cached gene set was read again"))
    assert genotype_genes(cfg, tmp_path, cache) == first
    stored.write_text(stored.read_text().replace("YBL007C", "YZZ999W"))
    monkeypatch.undo()
    with pytest.warns(CacheRebuiltWarning, match=stored.name):
        assert genotype_genes(cfg, tmp_path, cache) == first
    assert kuzmin.is_file()


def test_missing_release_file_names_the_file_and_the_publication(tmp_path):
    from dcell_core.config import compose
    from omegaconf import OmegaConf

    for name, publication in (("costanzo2016", "Science 353:aaf1420"), ("kuzmin2018", "Science 360:eaao1729"),
                              ("kuzmin2020", "Science 368:eaaz5667")):
        gcfg = OmegaConf.to_object(compose([f"data={name}"]).data.genotypes)
        with pytest.raises(FileNotFoundError) as info:
            read_source(gcfg, tmp_path)
        text = str(info.value)
        assert str(tmp_path / gcfg.paths()[0]) in text and publication in text and "not shipped" in text


def test_config_validation_of_the_screen_options():
    with pytest.raises(ValueError) as info:
        validate_config(GenotypeConfig(source="table", path=["a.csv", "b.csv"], alleles=["ts"], repeats="median",
                                       mutant_types=["trigenic"]))
    for part in ("reads one file", "alleles: ['ts'] must be", "repeats: 'median'",
                 "mutant_types: applies to source 'kuzmin' only"):
        assert part in str(info.value)
    with pytest.raises(ValueError, match="temperatures: applies to source 'sga' only"):
        validate_config(GenotypeConfig(source="kuzmin", path="k.tsv", temperatures=[26]))
    with pytest.raises(ValueError, match="repeats: 'mean' applies to genotype files"):
        validate_config(GenotypeConfig(repeats="mean"))
    GenotypeConfig(source="sga", path=["a.txt", "b.txt"], temperatures=[26], singles=True).validate()


# ---- the CLI -----------------------------------------------------------------------------------------------
# DNA-repair genes (in the yeast_dna_repair sub-hierarchy) and one that is not (YBL007C, SLA1: endocytosis).
REPAIR = ["YAL015C", "YER095W", "YML032C", "YNL250W", "YMR224C"]


def _repair_screen(path: Path) -> list[list[str]]:
    rows = []
    for i, query in enumerate(REPAIR[:3]):
        for j, array in enumerate(REPAIR[3:] + ["YBL007C"]):
            rows.append([f"{query}+YDL227C_tm{i}", "x+hoΔ", f"{array}_dma{j}", "y", "digenic", "0", "0", "0.5", "",
                         "0.9", f"{0.8 + 0.01 * (i + j)}", "0.01"])
    rows.append([f"{REPAIR[0]}+{REPAIR[1]}_tm9", "a+b", f"{REPAIR[3]}_dma0", "y", "trigenic", "0", "0", "0.5", "",
                 "0.9", "0.6", "0.01"])
    write_tsv(path, KUZMIN_HEADER, rows)
    return rows


def test_genotypes_cli_json_summary(tmp_path):
    rows = _repair_screen(tmp_path / "screen.tsv")
    kept = [r for r in rows if "YBL007C" not in r[2]]
    r = run_python("-m", "dcell_core.genotypes", "data=yeast_dna_repair", "data.genotypes.source=kuzmin",
                   f"data.genotypes.path={tmp_path / 'screen.tsv'}", "data.genotypes.drop_unknown=true", "--json",
                   env=env_for(tmp_path / "cache"), cwd=REPO)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    fitness = np.array([float(row[10]) for row in kept])
    assert out["rows"] == len(kept) and out["dropped"]["unknown"] == len(rows) - len(kept)
    assert out["by_order"] == {"2": sum(row[4] == "digenic" for row in kept), "3": 1}
    assert out["genes"] == len(REPAIR) and out["dropped"]["neutral_only"] == 0
    assert out["phenotype"]["mean"] == pytest.approx(fitness.mean(), abs=1e-6)
    assert out["phenotype"]["std"] == pytest.approx(fitness.std(), abs=1e-6)
    assert sum(out["splits"].values()) == len(kept) and out["stats"]["neutral_marker_rows"] == len(rows) - 1


def test_genotypes_cli_text_and_usage_errors(tmp_path):
    _repair_screen(tmp_path / "screen.tsv")
    base = ["-m", "dcell_core.genotypes", "data=yeast_dna_repair", "data.genotypes.source=kuzmin",
            "data.genotypes.drop_unknown=true"]
    env = env_for(tmp_path / "cache")
    r = run_python(*base, f"data.genotypes.path={tmp_path / 'screen.tsv'}", env=env)
    assert r.returncode == 0 and "by order" in r.stdout and "unknown 3" in r.stdout, r.stderr
    r = run_python(*base, f"data.genotypes.path={tmp_path / 'none.tsv'}", env=env)
    assert r.returncode == 2 and "genotype file not found" in r.stderr and "none.tsv" in r.stderr
    r = run_python(*base, f"data.genotypes.path={tmp_path / 'screen.tsv'}", "data.genotypes.phenotype=tau", env=env)
    assert r.returncode == 2 and "unknown Kuzmin phenotype 'tau'" in r.stderr
    r = run_python(*base, "data.genotypes.no_such_knob=1", env=env)
    assert r.returncode == 2 and "no_such_knob" in r.stderr


# ---- the read benchmark, small ----------------------------------------------------------------------------
def test_screen_read_benchmark_small_run_reads_every_row_it_wrote():
    rows = 3000
    r = run_python("-m", "benchmarks.screen_read", "--rows", str(rows), "--json", cwd=REPO)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["rows"] == rows == sum(out["files"].values()) and set(out["files"]) == {
        "SGA_ExE.txt", "SGA_NxN.txt", "SGA_ExN_NxE.txt"}
    assert out["dropped"] == {"dropped_alleles": 0, "dropped_temperature": 0, "dropped_missing": 0,
                              "dropped_unknown": 0}
    assert sum(out["split_sizes"].values()) == rows and out["within_budget"] is True
    assert 0 < out["baseline_gib"] <= out["read_peak_gib"] <= out["dataset_peak_gib"] < out["budget_gib"]
    assert out["machine"]["cpu"] and out["machine"]["nproc"] >= 1
