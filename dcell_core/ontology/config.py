"""Typed configuration of the ontology pipeline (a Hydra structured config: unknown keys fail to compose)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional

FILTER_STEPS = ("date", "evidence", "containment", "redundancy", "transitive_reduction")
NAMESPACES = ("biological_process", "molecular_function", "cellular_component")
ANNOTATION_SOURCES = ("sgd_genbank", "gaf")
SYNTHETIC_ROOT = "DCELL:ROOT"


@dataclass
class OntologyConfig:
    # GO OBO file; "snapshot:NAME" names a file of the embedded yeast snapshot (dcell_core/resources/yeast).
    obo: str = "snapshot:go_yeast.obo"
    # Annotation file(s) and their format: "sgd_genbank" (GO qualifiers of SGD GenBank files) or "gaf" (GAF 2.x).
    annotations: str = "snapshot:sgd_go.gb.gz"
    annotation_source: str = "sgd_genbank"
    # For GAF: which column names the gene (db_object_id, db_object_symbol, synonym).
    gaf_gene_field: str = "db_object_symbol"
    # GO relations that become parent-child edges.
    relations: List[str] = field(default_factory=lambda: ["is_a", "part_of"])
    # Namespaces kept under the synthetic root (ignored when `root` names a GO term).
    namespaces: List[str] = field(default_factory=lambda: list(NAMESPACES))
    # Root of the hierarchy: a GO id (its sub-hierarchy), or null for one root above the namespace roots.
    root: Optional[str] = None
    # The filters, applied in this order; each name may appear once. "date" needs date_cutoff and vice versa.
    # The default keeps transitive_reduction, which the paper does not list (yeast_go_paper leaves it out).
    filter_order: List[str] = field(
        default_factory=lambda: ["evidence", "containment", "redundancy", "transitive_reduction"])
    # date: drop annotations made after this day (YYYY-MM-DD); only sources with dates (GAF).
    date_cutoff: Optional[str] = None
    # evidence: drop annotations with these GO evidence codes (paper: IGI, "to avoid circularity").
    exclude_evidence: List[str] = field(default_factory=lambda: ["IGI"])
    # containment: remove terms containing fewer genes than this (own or any descendant's; paper: 6).
    min_genes: int = 6
    # The genes the hierarchy is built over: "annotated" (every gene of the annotation file), "dataset" (the genes
    # disrupted in at least one genotype of data.genotypes), or a text file listing one gene per line (a relative
    # path is taken from base_dir). It sets the hierarchy's genes, the containment counts and the widths.
    gene_universe: str = "annotated"
    # Removed (replaced by gene_universe); setting it is an error that says what to write instead.
    containment_genes: Optional[str] = None

    def validate(self) -> None:
        """Raise one ValueError listing every invalid field with its value."""
        problems = []
        unknown = [s for s in self.filter_order if s not in FILTER_STEPS]
        if unknown:
            problems.append(f"filter_order: unknown step(s) {unknown}; known: {list(FILTER_STEPS)}")
        dup = sorted({s for s in self.filter_order if list(self.filter_order).count(s) > 1})
        if dup:
            problems.append(f"filter_order: step(s) listed twice: {dup}")
        if ("date" in self.filter_order) != (self.date_cutoff is not None):
            problems.append(f"date_cutoff={self.date_cutoff!r} and filter_order={list(self.filter_order)}: "
                            "set date_cutoff exactly when 'date' is in filter_order")
        if self.date_cutoff is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(self.date_cutoff)):
            problems.append(f"date_cutoff: expected YYYY-MM-DD, got {self.date_cutoff!r}")
        if self.annotation_source not in ANNOTATION_SOURCES:
            problems.append(f"annotation_source: {self.annotation_source!r} not in {list(ANNOTATION_SOURCES)}")
        bad_ns = [n for n in self.namespaces if n not in NAMESPACES]
        if bad_ns or not self.namespaces:
            problems.append(f"namespaces: {list(self.namespaces)} must be a non-empty subset of {list(NAMESPACES)}")
        if self.root is not None and not re.fullmatch(r"GO:\d{7}", str(self.root)):
            problems.append(f"root: expected a GO id like GO:0006281 or null, got {self.root!r}")
        if self.min_genes < 1:
            problems.append(f"min_genes: must be >= 1, got {self.min_genes}")
        if self.containment_genes is not None:
            value = self.containment_genes if self.containment_genes in ("annotated", "dataset") else "FILE"
            problems.append(f"containment_genes: {self.containment_genes!r}: this setting was removed; write "
                            f"data.ontology.gene_universe={value} instead (annotated, dataset, or a gene-list "
                            "file: it sets the hierarchy's genes and widths, not only the containment counts)")
        if not str(self.gene_universe).strip():
            problems.append(f"gene_universe: {self.gene_universe!r}: expected 'annotated', 'dataset' or a file path")
        bad_ev = [e for e in self.exclude_evidence if not str(e).isalpha()]
        if bad_ev:
            problems.append(f"exclude_evidence: not evidence codes: {bad_ev}")
        if problems:
            raise ValueError("invalid ontology config:\n  " + "\n  ".join(problems))

    def fingerprint_fields(self) -> dict:
        """The settings that change the hierarchy, with the filters as an ordered list of (name, params).

        The gene universe enters the fingerprint as its resolved gene list (build.fingerprint), not as this value."""
        params = {
            "date": {"date_cutoff": self.date_cutoff},
            "evidence": {"exclude_evidence": sorted(self.exclude_evidence)},
            "containment": {"min_genes": self.min_genes},
            "redundancy": {},
            "transitive_reduction": {},
        }
        return {
            "annotation_source": self.annotation_source,
            "gaf_gene_field": self.gaf_gene_field if self.annotation_source == "gaf" else None,
            "relations": sorted(self.relations),
            "namespaces": sorted(self.namespaces) if self.root is None else None,
            "root": self.root,
            "filters": [{"step": s, **params[s]} for s in self.filter_order],
        }
