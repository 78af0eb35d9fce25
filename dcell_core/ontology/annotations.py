"""Gene annotation readers: GAF 2.x files and the GO qualifiers of SGD GenBank flat files.

Both return an `AnnotationSet`: one record per (gene, GO id, evidence code), with the annotation date
where the source has one. NOT-qualified GAF lines are excluded here (they state that a gene does *not*
have the function) and counted in `stats`.
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from dcell_core.fileio import file_sha256

GO_ID = re.compile(r"^GO:\d{7}$")
GAF_ASPECTS = {"P", "F", "C"}
GENBANK_ASPECTS = {"GO_process": "P", "GO_function": "F", "GO_component": "C"}
# "GO:0009277 - fungal-type cell wall [Evidence IBA]" optionally followed by "[PMID 123]" references.
GENBANK_GO_VALUE = re.compile(r"^(GO:\d{7}) - (.*?) \[Evidence ([A-Za-z,]+)\](?: \[.*\])?$")


class AnnotationFormatError(ValueError):
    """A malformed annotation line; the message names the file, the line number and the value."""

    def __init__(self, path: Path | str, line_no: int, problem: str, value: str):
        self.path, self.line_no, self.value = str(path), line_no, value
        super().__init__(f"{path}:{line_no}: {problem}: {value!r}")


class Annotation(NamedTuple):
    gene: str  # systematic gene id (for yeast: the ORF, e.g. YAL068C)
    go_id: str  # GO:nnnnnnn as written in the source (alt ids are resolved later, by the ontology)
    evidence: str  # GO evidence code, e.g. IDA, IGI, ND
    aspect: str  # P, F or C
    date: str | None  # YYYYMMDD, or None when the source carries no dates


@dataclass(frozen=True)
class AnnotationSet:
    records: tuple[Annotation, ...]
    source: str  # "gaf" or "sgd_genbank"
    version: str  # the source's own version (gaf-version + date-generated, or GenBank LOCUS dates)
    sha256: str  # of the file bytes as read, for the fingerprint
    has_dates: bool
    stats: dict = field(default_factory=dict)  # counts of lines read and excluded, by reason


def _open_text(path: Path):
    if not path.exists():
        raise FileNotFoundError(f"annotation file not found: {path}")
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


# ---- GAF 2.x --------------------------------------------------------------------------------------------
GAF_GENE_FIELDS = {"db_object_id": 1, "db_object_symbol": 2, "synonym": 10}


def read_gaf(path: str | Path, gene_field: str = "db_object_symbol") -> AnnotationSet:
    """Read a GAF 2.x file (optionally gzipped).

    gene_field picks the gene identifier: 'db_object_id' (column 2), 'db_object_symbol' (column 3) or
    'synonym' (the first entry of column 11, where SGD puts the systematic ORF name).
    """
    path = Path(path)
    if gene_field not in GAF_GENE_FIELDS:
        raise ValueError(f"gene_field must be one of {sorted(GAF_GENE_FIELDS)}, got {gene_field!r}")
    col = GAF_GENE_FIELDS[gene_field]
    records: list[Annotation] = []
    header: dict[str, str] = {}
    n_not = 0
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\n\r")
            if line.startswith("!"):
                key, _, val = line[1:].partition(":")
                if val:
                    header.setdefault(key.strip(), val.strip())
                continue
            if not line.strip():
                continue
            rec = _parse_gaf_line(path, line_no, line, col)
            if rec is None:
                n_not += 1
            else:
                records.append(rec)
    version = header.get("gaf-version")
    if version is None:
        raise AnnotationFormatError(path, 1, "missing '!gaf-version:' header", "")
    if not version.startswith("2"):
        raise AnnotationFormatError(path, 1, "unsupported GAF version (need 2.x)", version)
    generated = header.get("date-generated") or header.get("Generated") or header.get("generated-by", "")
    return AnnotationSet(
        records=tuple(records),
        source="gaf",
        version=f"gaf-{version} {generated}".strip(),
        sha256=file_sha256([path]),
        has_dates=True,
        stats={"records": len(records), "excluded_not_qualifier": n_not},
    )


def _parse_gaf_line(path: Path, line_no: int, line: str, gene_col: int) -> Annotation | None:
    cols = line.split("\t")
    if len(cols) not in (15, 16, 17):
        raise AnnotationFormatError(path, line_no, f"GAF line has {len(cols)} tab-separated columns, need 15-17",
                                    line[:120])
    qualifiers = {q.strip() for q in cols[3].split("|")} if cols[3] else set()
    if "NOT" in qualifiers:
        return None
    go_id, evidence, aspect, date = cols[4], cols[6], cols[8], cols[13]
    if not GO_ID.match(go_id):
        raise AnnotationFormatError(path, line_no, "column 5 is not a GO id", go_id)
    if not evidence or not evidence.isalpha():
        raise AnnotationFormatError(path, line_no, "column 7 is not an evidence code", evidence)
    if aspect not in GAF_ASPECTS:
        raise AnnotationFormatError(path, line_no, "column 9 (aspect) must be P, F or C", aspect)
    if not (len(date) == 8 and date.isdigit() and "01" <= date[4:6] <= "12" and "01" <= date[6:8] <= "31"):
        raise AnnotationFormatError(path, line_no, "column 14 is not a YYYYMMDD date", date)
    gene = cols[gene_col].split("|")[0].strip()
    if not gene:
        raise AnnotationFormatError(path, line_no, f"column {gene_col + 1} (gene id) is empty", line[:120])
    return Annotation(gene, go_id, evidence, aspect, date)


# ---- SGD GenBank qualifiers -------------------------------------------------------------------------------
def read_sgd_genbank(paths: list[str | Path] | str | Path) -> AnnotationSet:
    """Read /locus_tag and /GO_process|function|component qualifiers of CDS features in GenBank files.

    A qualifier value such as "GO:0016021 - integral component of membrane [Evidence IBA,IEA]" yields one
    record per listed evidence code. The files carry no annotation dates.
    """
    files = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not files:
        raise ValueError("read_sgd_genbank needs at least one file")
    records: set[Annotation] = set()
    loci: list[str] = []
    n_cds = 0
    for path in files:
        with _open_text(path) as f:
            for start_line, feature in _genbank_features(path, f):
                key, quals = feature
                if key != "CDS":
                    if key == "LOCUS":
                        loci.append(quals[0][2])
                    continue
                n_cds += 1
                records.update(_cds_annotations(path, start_line, quals))
    ordered = tuple(sorted(records))
    return AnnotationSet(
        records=ordered,
        source="sgd_genbank",
        version="; ".join(loci),
        sha256=file_sha256(files),
        has_dates=False,
        stats={"records": len(ordered), "cds_features": n_cds},
    )


def _genbank_features(path: Path, lines) -> Iterator[tuple[int, tuple[str, list[tuple[int, str, str]]]]]:
    """Yield (line, (feature key, [(line, qualifier, value)])) for each feature; also the LOCUS line."""
    in_features = False
    key, key_line, quals = None, 0, []
    open_quote = False
    for line_no, raw in enumerate(lines, 1):
        line = raw.rstrip("\n\r")
        if line.startswith("LOCUS"):
            yield line_no, ("LOCUS", [(line_no, "locus", " ".join(line.split()[1:2] + line.split()[-1:]))])
            continue
        if line.startswith("FEATURES"):
            in_features = True
            continue
        if not in_features:
            continue
        if line.startswith("ORIGIN") or line.startswith("//") or (line and not line.startswith(" ")):
            if key is not None:
                yield key_line, (key, quals)
            key, quals, in_features, open_quote = None, [], False, False
            continue
        if len(line) > 5 and line[5] != " " and line[:5] == "     ":
            if key is not None:
                yield key_line, (key, quals)
            key, key_line, quals, open_quote = line[5:21].strip(), line_no, [], False
            continue
        body = line[21:] if line[:21].strip() == "" else None
        if body is None:
            raise AnnotationFormatError(path, line_no, "GenBank feature line is not indented to column 22", line)
        if body.startswith("/") and not open_quote:
            name, eq, value = body[1:].partition("=")
            quals.append((line_no, name, value))
            open_quote = value.startswith('"') and not (len(value) > 1 and value.endswith('"'))
        elif not quals:
            continue  # a wrapped feature location, e.g. join(...) over several lines
        else:
            q_line, name, value = quals[-1]
            quals[-1] = (q_line, name, value + " " + body.strip())
            if open_quote and body.rstrip().endswith('"'):
                open_quote = False
    if key is not None:
        yield key_line, (key, quals)


def _cds_annotations(path: Path, start_line: int, quals: list[tuple[int, str, str]]) -> list[Annotation]:
    tags = [v.strip('"') for _, n, v in quals if n == "locus_tag"]
    go_quals = [(ln, n, v) for ln, n, v in quals if n in GENBANK_ASPECTS]
    if not go_quals:
        return []
    if len(tags) != 1 or not tags[0]:
        raise AnnotationFormatError(path, start_line, "CDS with GO qualifiers needs exactly one /locus_tag",
                                    ",".join(tags))
    out = []
    for line_no, name, value in go_quals:
        text = value.strip()
        if not (text.startswith('"') and text.endswith('"')):
            raise AnnotationFormatError(path, line_no, f"/{name} value is not quoted", text)
        m = GENBANK_GO_VALUE.match(text[1:-1])
        if not m:
            raise AnnotationFormatError(path, line_no, f"/{name} is not 'GO:nnnnnnn - name [Evidence X]'", text)
        go_id, _name, codes = m.groups()
        for code in codes.split(","):
            out.append(Annotation(tags[0], go_id, code, GENBANK_ASPECTS[name], None))
    return out
