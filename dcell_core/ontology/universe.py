"""The gene universe: the genes a hierarchy is built over (data.ontology.gene_universe).

`annotated` takes every gene of the annotation file; `dataset` the genes disrupted in at least one genotype of
the configured data (given by the caller, dcell_core.data.dataset_genes); any other value is the path of a text
file listing one gene per line (blank lines and `#` comments allowed). Annotation records of genes outside the
universe are dropped before the filters, so the universe sets the hierarchy's genes, the containment counts and
the term widths; its gene list enters the fingerprint.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

ANNOTATED = "annotated"
DATASET = "dataset"
GENE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


class GeneListError(ValueError):
    """A gene-list file that cannot be read as one gene per line; the message names file, line and value."""

    def __init__(self, path: Path | str, line_no: int | None, problem: str, value: str = ""):
        where = f"{path}, line {line_no}" if line_no is not None else str(path)
        super().__init__(f"gene universe file {where}: {problem}" + (f": {value!r}" if value else ""))


@dataclass(frozen=True)
class GeneUniverse:
    kind: str  # "annotated", "dataset" or "file"
    genes: frozenset[str] | None  # None for "annotated": every gene of the annotation file
    source: str | None = None  # the file's resolved path, for "file"

    @property
    def genes_sha256(self) -> str | None:
        return None if self.genes is None else gene_list_sha256(self.genes)

    def fingerprint_field(self) -> dict:
        """What enters the hierarchy's fingerprint: the kind and the sorted gene list's hash (not the path)."""
        return {"kind": self.kind, "genes_sha256": self.genes_sha256}


def gene_list_sha256(genes: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(genes)).encode()).hexdigest()


def resolve_universe(spec: str, path_of, dataset_genes: frozenset[str] | None) -> GeneUniverse:
    """The universe of a gene_universe setting; `path_of(spec)` resolves a file name like the config's other files.

    `dataset_genes` must be given exactly when spec is "dataset"."""
    if spec == DATASET:
        if dataset_genes is None:
            raise ValueError("data.ontology.gene_universe='dataset' needs the genes of the configured genotype data: "
                             "build through dcell_core.data (load_run_hierarchy) or pass dataset_genes")
        if not dataset_genes:
            raise ValueError("data.ontology.gene_universe='dataset': the genotype data disrupts no gene")
        return GeneUniverse(DATASET, frozenset(dataset_genes))
    if dataset_genes is not None:
        raise ValueError(f"dataset genes were given, but data.ontology.gene_universe={spec!r}, not 'dataset'")
    if spec == ANNOTATED:
        return GeneUniverse(ANNOTATED, None)
    path = Path(path_of(spec))
    if not path.is_file():
        raise FileNotFoundError(f"gene universe file not found: {path} (data.ontology.gene_universe={spec!r}; "
                                f"or use '{ANNOTATED}' or '{DATASET}')")
    return GeneUniverse("file", frozenset(read_gene_list(path)), str(path))


def read_gene_list(path: str | Path) -> tuple[str, ...]:
    """Genes of a text file, one per line, in file order; blank lines and text after `#` are ignored.

    A line with more than one field, a name with characters outside [A-Za-z0-9_.:-], a gene listed twice or a
    file without any gene is a GeneListError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GeneListError(path, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    genes: list[str] = []
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        fields = body.split()
        if len(fields) != 1:
            raise GeneListError(path, line_no, f"expected one gene per line, found {len(fields)} fields", body)
        if not GENE_NAME.fullmatch(body):
            raise GeneListError(path, line_no, "not a gene name", body)
        if body in first_line:
            raise GeneListError(path, line_no, f"gene listed twice (first on line {first_line[body]})", body)
        first_line[body] = line_no
        genes.append(body)
    if not genes:
        raise GeneListError(path, None, "lists no gene (only blank or # comment lines)")
    return tuple(genes)


def format_gene_list(genes: Iterable[str], comments: Iterable[str] = ()) -> str:
    """A gene-list file's text: `# ` comment lines, then the genes sorted, one per line."""
    return "".join(f"# {c}\n" for c in comments) + "".join(f"{g}\n" for g in sorted(genes))


def sample_genes(population: Iterable[str], size: int, seed: int) -> list[str]:
    """A seeded sample of `size` distinct genes (the population is sorted first, so its order does not matter)."""
    pool = sorted(set(population))
    if not 0 < size <= len(pool):
        raise ValueError(f"sample size must lie in [1, {len(pool)}] (the population), got {size}")
    return sorted(random.Random(seed).sample(pool, size))
