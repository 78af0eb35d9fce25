"""The embedded yeast snapshot: counts against the committed expectations, and invariants checked independently."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcell_core.config import cache_dir, compose, ontology_config
from dcell_core.ontology import load_hierarchy, read_sgd_genbank, resolve_path

EXPECTED = json.loads((Path(__file__).parent / "expectations" / "snapshot.json").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    out = {}
    for name in ["yeast_go", "yeast_dna_repair", "yeast_dna_metabolism", "yeast_cell_cycle"]:
        out[name] = load_hierarchy(ontology_config(compose([f"data={name}"])), cache)
    return out


@pytest.mark.parametrize("name", ["yeast_go", "yeast_dna_repair", "yeast_dna_metabolism", "yeast_cell_cycle"])
def test_counts_match_expectations(built, name):
    h, exp = built[name], EXPECTED[name]
    s = h.summary("contained")
    assert {k: s[k] for k in exp if k in s} == {k: v for k, v in exp.items() if k in s}
    assert h.parameter_count("direct") == exp["parameters_direct"]
    assert h.provenance["go"]["data_version"] == exp["go_data_version"]


@pytest.mark.parametrize("name", ["yeast_go", "yeast_dna_repair", "yeast_cell_cycle"])
def test_filter_invariants_hold_on_real_data(built, name):
    h = built[name]
    sets = h.contained_gene_sets()
    # containment: every term contains >= 6 genes
    assert min(len(s) for s in sets) >= 6
    # redundancy: no term contains exactly the genes of one of its children
    assert not [h.terms[t] for t in range(h.num_terms) if any(sets[c] == sets[t] for c in h.children[t])]
    # transitive reduction: no child is also reachable through another child
    below = [set() for _ in range(h.num_terms)]
    for t in range(h.num_terms):  # children precede parents in index order
        for c in h.children[t]:
            below[t] |= {c} | below[c]
    shortcuts = [(h.terms[t], h.terms[c]) for t in range(h.num_terms) for c in h.children[t]
                 if any(c in below[o] for o in h.children[t] if o != c)]
    assert shortcuts == []
    # strata: a term is one above its highest child
    assert all(h.strata[t] == 1 + max((h.strata[c] for c in h.children[t]), default=-1) for t in range(h.num_terms))


def test_whole_go_genes_are_exactly_the_usable_annotated_genes(built):
    """Independently of the filters: whole-GO genes = genes with a non-IGI annotation to a live GO term."""
    from dcell_core.ontology import load_go

    cfg = ontology_config(compose(["data=yeast_go"]))
    go = load_go(resolve_path(cfg.obo))
    ann = read_sgd_genbank(resolve_path(cfg.annotations))
    usable = {r.gene for r in ann.records if r.evidence != "IGI" and go.resolve(r.go_id) is not None}
    assert set(built["yeast_go"].genes) == usable


def test_subhierarchies_are_rooted_where_configured(built):
    assert built["yeast_dna_repair"].terms[built["yeast_dna_repair"].root] == "GO:0006281"
    assert built["yeast_cell_cycle"].names[built["yeast_cell_cycle"].root] == "cell cycle"
    # every DNA repair gene is among the DNA metabolism genes (DNA repair is_a DNA metabolic process)
    assert set(built["yeast_dna_repair"].genes) <= set(built["yeast_dna_metabolism"].genes)


def test_cache_dir_comes_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DCELL_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir(compose([])) == (tmp_path / "c").resolve()
