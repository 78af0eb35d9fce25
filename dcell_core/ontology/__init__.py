"""GO + gene annotations -> filtered, stratified, fingerprinted DCell hierarchy."""
from dcell_core.ontology.annotations import Annotation, AnnotationFormatError, AnnotationSet, read_gaf, read_sgd_genbank
from dcell_core.ontology.build import build_hierarchy, fingerprint, load_hierarchy, resolve_path
from dcell_core.ontology.config import OntologyConfig
from dcell_core.ontology.filters import EmptyHierarchyError
from dcell_core.ontology.hierarchy import Hierarchy, HierarchyError, paper_width
from dcell_core.ontology.obo import GoGraph, OboFormatError, load_go
from dcell_core.ontology.universe import GeneListError, GeneUniverse, read_gene_list

__all__ = [
    "Annotation", "AnnotationFormatError", "AnnotationSet", "EmptyHierarchyError", "GeneListError", "GeneUniverse",
    "GoGraph", "Hierarchy", "HierarchyError", "OboFormatError", "OntologyConfig", "build_hierarchy", "fingerprint",
    "load_go", "load_hierarchy", "load_named", "paper_width", "read_gaf", "read_gene_list", "read_sgd_genbank",
    "resolve_path",
]


def load_named(name: str, overrides: tuple[str, ...] = ()) -> Hierarchy:
    """The hierarchy of data config `name` (e.g. 'yeast_dna_repair'), through the on-disk cache."""
    from dcell_core.config import cache_dir, compose
    from dcell_core.data import load_run_hierarchy

    cfg = compose([f"data={name}", *overrides])
    return load_run_hierarchy(cfg, cache_dir(cfg))
