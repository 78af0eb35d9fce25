"""From an OntologyConfig to a validated Hierarchy: fingerprint, on-disk cache, GO + annotations + filters.

`dataset_genes` (every function here) are the genes disrupted in the configured genotype data; they are needed
exactly when data.ontology.gene_universe is "dataset" (dcell_core.data.load_run_hierarchy passes them).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from functools import partial
from importlib import resources
from pathlib import Path

from dcell_core.fileio import file_sha256, warn_cache_rebuilt
from dcell_core.ontology.annotations import AnnotationSet, read_gaf, read_sgd_genbank
from dcell_core.ontology.cache import (CacheFileInvalid, hierarchy_cache_path, read_hierarchy_cache,
                                       write_hierarchy_cache)
from dcell_core.ontology.config import SYNTHETIC_ROOT, OntologyConfig
from dcell_core.ontology.filters import (FilterState, apply_filters, containment_filter, date_filter,
                                         evidence_filter, redundancy_filter, transitive_reduction)
from dcell_core.ontology.hierarchy import Hierarchy, reachable_from
from dcell_core.ontology.obo import GoGraph, load_go
from dcell_core.ontology.universe import GeneUniverse, resolve_universe

BUILDER_VERSION = 1  # bump when the build logic changes what a fingerprint produces
SNAPSHOT_PREFIX = "snapshot:"


def resolve_path(spec: str, base_dir: str | Path | None = None) -> Path:
    """'snapshot:NAME' -> the embedded snapshot file; a relative path is taken from base_dir (default: cwd)."""
    if spec.startswith(SNAPSHOT_PREFIX):
        return Path(str(resources.files("dcell_core") / "resources" / "yeast" / spec[len(SNAPSHOT_PREFIX):]))
    p = Path(spec).expanduser()
    return p if p.is_absolute() else Path(base_dir or Path.cwd()) / p


def gene_universe(cfg: OntologyConfig, base_dir: str | Path | None = None,
                  dataset_genes: frozenset[str] | None = None) -> GeneUniverse:
    """The resolved data.ontology.gene_universe (a file is read and checked here)."""
    return resolve_universe(cfg.gene_universe, partial(resolve_path, base_dir=base_dir), dataset_genes)


def fingerprint(cfg: OntologyConfig, base_dir: str | Path | None = None,
                dataset_genes: frozenset[str] | None = None) -> tuple[str, dict]:
    """Hash of (OBO content and data-version, annotation source and content, gene universe, settings and
    filter order)."""
    cfg.validate()
    return _fingerprint(cfg, base_dir, gene_universe(cfg, base_dir, dataset_genes))


def _fingerprint(cfg: OntologyConfig, base_dir: str | Path | None, universe: GeneUniverse) -> tuple[str, dict]:
    """The fingerprint of a validated cfg (every caller validates it first) over a resolved universe."""
    obo, ann = resolve_path(cfg.obo, base_dir), resolve_path(cfg.annotations, base_dir)
    for label, spec, p in (("obo", cfg.obo, obo), ("annotations", cfg.annotations, ann)):
        if not p.exists():
            raise FileNotFoundError(f"{label} file not found: {p} (config value {label}={spec!r})")
    key = {
        "builder_version": BUILDER_VERSION,
        "obo_sha256": file_sha256([obo]),
        "obo_data_version": _obo_data_version(obo),
        "annotations_sha256": file_sha256([ann]),
        **cfg.fingerprint_fields(),
        "gene_universe": universe.fingerprint_field(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return digest, key


def _obo_data_version(path: Path) -> str:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("data-version:"):
                return line.split(":", 1)[1].strip()
            if line.startswith("["):
                break
    return ""


def load_hierarchy(cfg: OntologyConfig, cache_dir: str | Path | None = None, base_dir: str | Path | None = None,
                   dataset_genes: frozenset[str] | None = None) -> Hierarchy:
    """The hierarchy for cfg: from the cache when its fingerprint is there, else built and cached atomically.

    A cache file that fails its checks (cache.read_hierarchy_cache) is rebuilt and rewritten, with a
    CacheRebuiltWarning naming the file and the reason."""
    cfg.validate()
    universe = gene_universe(cfg, base_dir, dataset_genes)
    fp, key = _fingerprint(cfg, base_dir, universe)
    cached = hierarchy_cache_path(cache_dir, fp) if cache_dir is not None else None
    if cached is not None and cached.exists():
        try:
            return read_hierarchy_cache(cached, fp)
        except CacheFileInvalid as exc:
            warn_cache_rebuilt(cached, str(exc))
    hierarchy = _build(cfg, base_dir, universe, (fp, key))
    if cached is not None:
        write_hierarchy_cache(cached, fp, hierarchy)
    return hierarchy


def read_annotations(cfg: OntologyConfig, base_dir: str | Path | None = None) -> AnnotationSet:
    path = resolve_path(cfg.annotations, base_dir)
    if cfg.annotation_source == "gaf":
        return read_gaf(path, cfg.gaf_gene_field)
    return read_sgd_genbank(path)


def build_hierarchy(cfg: OntologyConfig, base_dir: str | Path | None = None,
                    dataset_genes: frozenset[str] | None = None) -> Hierarchy:
    """The hierarchy for cfg, built without the cache."""
    cfg.validate()
    universe = gene_universe(cfg, base_dir, dataset_genes)
    return _build(cfg, base_dir, universe, _fingerprint(cfg, base_dir, universe))


def _build(cfg: OntologyConfig, base_dir: str | Path | None, universe: GeneUniverse,
           fingerprint_key: tuple[str, dict]) -> Hierarchy:
    fp, key = fingerprint_key
    go = load_go(resolve_path(cfg.obo, base_dir), tuple(cfg.relations))
    annotations = read_annotations(cfg, base_dir)
    universe_stats = universe_report(universe, annotations, cfg)
    state, scope_stats = initial_state(go, annotations, cfg, universe)
    steps = {
        "date": partial(date_filter, date_cutoff=cfg.date_cutoff),
        "evidence": partial(evidence_filter, exclude_evidence=list(cfg.exclude_evidence)),
        "containment": partial(containment_filter, min_genes=cfg.min_genes),
        "redundancy": redundancy_filter,
        "transitive_reduction": transitive_reduction,
    }
    log = apply_filters(state, [(name, steps[name]) for name in cfg.filter_order])
    kept = {g for recs in state.records.values() for g, _, _ in recs}
    universe_stats["in_hierarchy"] = len(kept)
    universe_stats["not_in_hierarchy"] = universe_stats["genes"] - len(kept)
    names = {**go.names, SYNTHETIC_ROOT: "root (above the GO namespace roots)"}
    provenance = {
        "fingerprint": fp,
        "fingerprint_key": key,
        "config": asdict(cfg),
        "go": {"path": go.path, "data_version": go.data_version, "sha256": go.sha256},
        "annotations": {"source": annotations.source, "version": annotations.version,
                        "sha256": annotations.sha256, **annotations.stats},
        "scope": scope_stats,
        "universe": universe_stats,
        "filter_log": log,
    }
    return Hierarchy.from_mappings(
        children=state.children,
        direct_genes={t: {g for g, _, _ in recs} for t, recs in state.records.items()},
        names={t: names[t] for t in state.children},
        provenance=provenance,
    )


def universe_report(universe: GeneUniverse, annotations: AnnotationSet, cfg: OntologyConfig) -> dict:
    """Counts of the universe against the annotation file: its genes, those with and without any annotation
    record (examples of the latter), and the annotated genes outside it.

    A universe of which no gene is annotated is an error (gene names of another kind than the annotations')."""
    annotated = {r.gene for r in annotations.records}
    genes = annotated if universe.genes is None else universe.genes
    unannotated = sorted(genes - annotated)
    report = {"kind": universe.kind, "source": universe.source or cfg.gene_universe, "genes": len(genes),
              "genes_sha256": universe.genes_sha256, "annotated": len(genes) - len(unannotated),
              "unannotated": len(unannotated), "unannotated_examples": unannotated[:20],
              "annotated_genes_outside": len(annotated - genes)}
    if genes and not report["annotated"]:
        raise ValueError(f"gene universe {report['source']}: none of its {len(genes)} genes (e.g. {unannotated[0]!r}) "
                         f"has a GO annotation in {annotations.source} file {cfg.annotations} (its genes are named "
                         f"like {min(annotated)!r})")
    return report


def initial_state(go: GoGraph, annotations: AnnotationSet, cfg: OntologyConfig,
                  universe: GeneUniverse) -> tuple[FilterState, dict]:
    """The term graph in scope (a GO term's descendants, or the namespaces under a synthetic root) with the
    annotation records of universe genes resolved to live terms; records of genes outside the universe, and
    obsolete and unknown GO ids, are counted, not kept."""
    children = go.children()
    if cfg.root is not None:
        root = go.resolve(cfg.root)
        if root is None:
            raise ValueError(f"root {cfg.root} is not a live term of {go.path} (data-version {go.data_version})")
        scope = reachable_from(root, children)
    else:
        root = SYNTHETIC_ROOT
        scope = {t for t, ns in go.namespaces.items() if ns in set(cfg.namespaces)}
    state_children = {t: {c for c in children[t] if c in scope} for t in scope}
    state_parents = {t: {p for p in go.parents[t] if p in scope} for t in scope}
    if cfg.root is None:
        tops = sorted(t for t in scope if not state_parents[t])
        state_children[root] = set(tops)
        state_parents[root] = set()
        for t in tops:
            state_parents[t].add(root)
    records: dict[str, set] = {t: set() for t in state_children}
    counts = {"annotation_records": len(annotations.records), "outside_universe": 0, "obsolete_go_id": 0,
              "unknown_go_id": 0, "outside_scope": 0, "alt_id_resolved": 0}
    unknown_ids: set[str] = set()
    for rec in annotations.records:
        if universe.genes is not None and rec.gene not in universe.genes:
            counts["outside_universe"] += 1
            continue
        term = go.resolve(rec.go_id)
        if term is None:
            key = "obsolete_go_id" if rec.go_id in go.obsolete else "unknown_go_id"
            counts[key] += 1
            if key == "unknown_go_id":
                unknown_ids.add(rec.go_id)
            continue
        counts["alt_id_resolved"] += term != rec.go_id
        if term not in records:
            counts["outside_scope"] += 1
            continue
        records[term].add((rec.gene, rec.evidence, rec.date))
    counts["unknown_go_ids"] = sorted(unknown_ids)[:20]
    return FilterState(state_children, state_parents, records, root, annotations.has_dates), counts


def annotation_modules(cfg: OntologyConfig, base_dir: str | Path | None,
                       genes: frozenset[str]) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """The unfiltered GO modules over `genes`: every live term in cfg's scope (its root's descendants, or its
    namespaces) with the genes annotated to it or to any descendant, from every annotation record whatever its
    evidence or date, with no containment, redundancy or reduction filter. Terms containing fewer than two of
    `genes` are left out. Returns (term -> genes, term -> its parent terms among those returned or above them).

    This is what a simulated screen's hidden truth is built from (genotypes.truth): the biology the model's
    filtered hierarchy only partly shows."""
    cfg.validate()
    go = load_go(resolve_path(cfg.obo, base_dir), tuple(cfg.relations))
    state, _ = initial_state(go, read_annotations(cfg, base_dir), cfg, GeneUniverse("file", frozenset(genes)))
    contained: dict[str, frozenset[str]] = {}
    for t in state.post_order():
        direct = {g for g, _, _ in state.records[t]}
        contained[t] = frozenset(direct.union(*(contained[c] for c in state.children[t])))
    kept = {t: g for t, g in contained.items() if len(g) >= 2 and t != SYNTHETIC_ROOT}
    return kept, {t: frozenset(p for p in state.parents[t] if p in kept) for t in kept}
