"""The GO term graph from an OBO file, read with goatools.

Only the relations asked for (is_a, part_of) become edges; obsolete terms are kept aside so that
annotations to them can be counted, not confused with unknown ids; alt_ids map to their term.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dcell_core.fileio import file_sha256

TAG_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*:")
KNOWN_RELATIONS = ("is_a", "part_of")


class OboFormatError(ValueError):
    """A malformed OBO file; the message names the file, the line number and the value."""

    def __init__(self, path: Path | str, line_no: int, problem: str, value: str):
        self.path, self.line_no, self.value = str(path), line_no, value
        super().__init__(f"{path}:{line_no}: {problem}: {value!r}")


@dataclass(frozen=True)
class GoGraph:
    names: dict[str, str]  # live term id -> name
    namespaces: dict[str, str]  # live term id -> namespace (biological_process, ...)
    parents: dict[str, frozenset[str]]  # live term id -> parent ids over the chosen relations
    alt_ids: dict[str, str]  # alt_id -> live term id
    obsolete: frozenset[str]  # obsolete term ids (never edges, never annotated targets)
    data_version: str  # the OBO header's data-version
    sha256: str  # of the file bytes
    path: str

    def resolve(self, go_id: str) -> str | None:
        """The live term for an id or alt_id; None for obsolete or unknown ids."""
        if go_id in self.names:
            return go_id
        return self.alt_ids.get(go_id)

    def children(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {t: set() for t in self.names}
        for t, ps in self.parents.items():
            for p in ps:
                out[p].add(t)
        return out


def check_obo_lines(path: Path) -> None:
    """Reject what goatools would misread or fail on without a location: inside a stanza every line is
    'tag: value'; ids are GO ids; every is_a / relationship target is defined in the file."""
    in_term = False
    defined: set[str] = set()
    references: list[tuple[int, str]] = []
    with open(path, encoding="utf-8") as f:
        for line_no, raw in enumerate(f, 1):
            line = raw.rstrip("\n\r")
            if not line.strip() or line.startswith("!"):
                continue
            if line.startswith("["):
                if not line.endswith("]"):
                    raise OboFormatError(path, line_no, "stanza header without closing ']'", line)
                in_term = line == "[Term]"
                continue
            if not TAG_LINE.match(line):
                raise OboFormatError(path, line_no, "not a 'tag: value' line", line)
            if in_term and line.startswith(("id:", "alt_id:", "is_a:")):
                value = line.split(":", 1)[1].split("!")[0].strip()
                if not re.fullmatch(r"GO:\d{7}", value):
                    raise OboFormatError(path, line_no, f"{line.split(':')[0]} is not a GO id", value)
                if line.startswith("is_a:"):
                    references.append((line_no, value))
                else:
                    defined.add(value)
            if in_term and line.startswith("relationship:"):
                parts = line.split(":", 1)[1].split("!")[0].split()
                if len(parts) != 2 or not re.fullmatch(r"GO:\d{7}", parts[1]):
                    raise OboFormatError(path, line_no, "relationship is not '<type> GO:nnnnnnn'", line)
                references.append((line_no, parts[1]))
    for line_no, target in references:
        if target not in defined:
            raise OboFormatError(path, line_no, "reference to a term the file does not define", target)


def load_go(path: str | Path, relations: tuple[str, ...] = KNOWN_RELATIONS) -> GoGraph:
    """Parse an OBO file with goatools, keeping the given relations as parent edges."""
    from goatools.obo_parser import GODag

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"OBO file not found: {path}")
    bad = [r for r in relations if r not in KNOWN_RELATIONS]
    if bad:
        raise ValueError(f"unknown relation(s) {bad}; supported: {list(KNOWN_RELATIONS)}")
    check_obo_lines(path)
    dag = GODag(str(path), optional_attrs={"relationship"}, load_obsolete=True, prt=None)
    if not dag.data_version:
        raise OboFormatError(path, 1, "header has no data-version", "")
    names, namespaces, parents, alt_ids, obsolete = {}, {}, {}, {}, set()
    for key, term in dag.items():
        if key != term.item_id:
            continue  # alt-id entries point at their main term; recorded below
        if term.is_obsolete:
            obsolete.add(term.item_id)
            continue
        names[term.item_id] = term.name
        namespaces[term.item_id] = term.namespace
        ps: set[str] = set()
        if "is_a" in relations:
            ps |= {p.item_id for p in term.parents}
        if "part_of" in relations:
            ps |= {p.item_id for p in term.relationship.get("part_of", ())}
        parents[term.item_id] = frozenset(ps)
        for alt in term.alt_ids:
            alt_ids[alt] = term.item_id
    dangling = sorted((t, p) for t, ps in parents.items() for p in ps if p not in names)
    if dangling:
        t, p = dangling[0]
        raise OboFormatError(path, 0, f"term {t} has an obsolete or missing parent ({len(dangling)} such edges)", p)
    return GoGraph(names, namespaces, parents, alt_ids, frozenset(obsolete), dag.data_version,
                   file_sha256([path]), str(path))
