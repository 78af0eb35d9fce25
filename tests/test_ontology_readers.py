"""Readers on small files in the real formats, bad lines included."""
from __future__ import annotations

from pathlib import Path

import pytest

from dcell_core.ontology.annotations import AnnotationFormatError, read_gaf, read_sgd_genbank
from dcell_core.ontology.obo import OboFormatError, load_go

DATA = Path(__file__).parent / "data" / "ontology"
GAF_HEADER = "!gaf-version: 2.1\n"
GOOD = "SGD\tS000002142\tPAU8\t\tGO:0009277\tPMID:1\tIBA\t\tC\tseripauperin\tYAL068C\tprotein\ttaxon:559292\t20170420\tSGD\n"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_gaf_fields_and_not_qualifier(tmp_path):
    not_line = GOOD.replace("\t\tGO:0009277", "\tNOT|colocalizes_with\tGO:0009277").replace("PAU8", "PAU9")
    p = write(tmp_path, "a.gaf", GAF_HEADER + "!date-generated: 2019-01-29\n" + GOOD + not_line)
    ann = read_gaf(p)
    assert [tuple(r) for r in ann.records] == [("PAU8", "GO:0009277", "IBA", "C", "20170420")]
    assert ann.stats["excluded_not_qualifier"] == 1
    assert ann.has_dates and ann.version == "gaf-2.1 2019-01-29"
    assert read_gaf(p, gene_field="synonym").records[0].gene == "YAL068C"
    assert read_gaf(p, gene_field="db_object_id").records[0].gene == "S000002142"


@pytest.mark.parametrize("bad, problem, value", [
    (GOOD.replace("GO:0009277", "GO:927"), "column 5 is not a GO id", "GO:927"),
    (GOOD.replace("\tC\t", "\tX\t"), "aspect", "X"),
    (GOOD.replace("20170420", "2017-04-20"), "YYYYMMDD", "2017-04-20"),
    (GOOD.replace("20170420", "20171320"), "YYYYMMDD", "20171320"),
    ("SGD\tS1\tPAU8\t\tGO:0009277\n", "5 tab-separated columns", "SGD"),
])
def test_gaf_bad_line_names_file_line_value(tmp_path, bad, problem, value):
    p = write(tmp_path, "bad.gaf", GAF_HEADER + GOOD + bad)
    with pytest.raises(AnnotationFormatError, match=problem) as err:
        read_gaf(p)
    assert err.value.path == str(p) and err.value.line_no == 3
    assert value in err.value.value
    assert f"{p}:3:" in str(err.value)


def test_gaf_needs_version_header(tmp_path):
    with pytest.raises(AnnotationFormatError, match="gaf-version"):
        read_gaf(write(tmp_path, "x.gaf", GOOD))
    with pytest.raises(AnnotationFormatError, match="unsupported GAF version"):
        read_gaf(write(tmp_path, "y.gaf", "!gaf-version: 1.0\n" + GOOD))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no/such.gaf"):
        read_gaf("no/such.gaf")


def test_genbank_qualifiers():
    ann = read_sgd_genbank(DATA / "small.gb")
    assert [tuple(r) for r in ann.records] == [
        ("YAA001C", "GO:0006281", "IMP", "P", None),
        ("YAA001C", "GO:0016021", "IBA", "C", None),
        ("YAA001C", "GO:0016021", "IEA", "C", None),
        ("YAA002W", "GO:0003674", "ND", "F", None),
    ]
    assert not ann.has_dates
    assert ann.stats["cds_features"] == 3
    assert ann.version == "BK000001 18-JAN-2017"


def test_genbank_bad_go_qualifier(tmp_path):
    text = (DATA / "small.gb").read_text().replace("[Evidence IMP]", "(Evidence IMP)")
    p = write(tmp_path, "bad.gb", text)
    with pytest.raises(AnnotationFormatError, match=r"bad.gb:14: /GO_process is not") as err:
        read_sgd_genbank(p)
    assert "GO:0006281 - DNA repair (Evidence IMP)" in err.value.value


def test_genbank_cds_without_locus_tag(tmp_path):
    text = (DATA / "small.gb").read_text().replace('                     /locus_tag="YAA002W"\n', "")
    with pytest.raises(AnnotationFormatError, match=r"bad.gb:20: CDS with GO qualifiers needs exactly one"):
        read_sgd_genbank(write(tmp_path, "bad.gb", text))


def test_obo_alt_ids_obsolete_relations():
    go = load_go(DATA / "hand.obo")
    assert go.data_version == "releases/2000-01-01"
    assert go.resolve("GO:0000011") == "GO:0000010"
    assert "GO:0000012" in go.obsolete and go.resolve("GO:0000012") is None
    assert go.parents["GO:0000006"] == {"GO:0000003", "GO:0000002"}  # is_a B + part_of A
    assert go.parents["GO:0000013"] == {"GO:0000001"}  # 'regulates' is not an edge
    assert load_go(DATA / "hand.obo", relations=("is_a",)).parents["GO:0000006"] == {"GO:0000003"}


@pytest.mark.parametrize("old, new, problem", [
    ("is_a: GO:0000002 ! A\n", "is_a GO:0000002\n", "not a 'tag: value' line"),
    ("id: GO:0000004", "id: GO:4", "id is not a GO id"),
    ("relationship: part_of GO:0000002 ! A", "relationship: part_of", "relationship is not"),
])
def test_obo_malformed_line(tmp_path, old, new, problem):
    text = (DATA / "hand.obo").read_text()
    line_no = text[: text.index(old)].count("\n") + 1
    p = write(tmp_path, "bad.obo", text.replace(old, new, 1))
    with pytest.raises(OboFormatError, match=problem) as err:
        load_go(p)
    assert err.value.line_no == line_no and f"bad.obo:{line_no}:" in str(err.value)


def test_obo_parent_undefined(tmp_path):
    text = (DATA / "hand.obo").read_text()
    line_no = text[: text.index("is_a: GO:0000007 ! F")].count("\n") + 1
    p = write(tmp_path, "bad.obo", text.replace("is_a: GO:0000007 ! F", "is_a: GO:0000099 ! nowhere"))
    with pytest.raises(OboFormatError, match=f"bad.obo:{line_no}: reference to a term the file does not define"):
        load_go(p)


def test_obo_parent_obsolete(tmp_path):
    text = (DATA / "hand.obo").read_text().replace("is_a: GO:0000007 ! F", "is_a: GO:0000012 ! obsolete J")
    with pytest.raises(OboFormatError, match="GO:0000008 has an obsolete or missing parent"):
        load_go(write(tmp_path, "bad.obo", text))
