"""Filters on the hand-made ontology (tests/data/ontology/hand.obo + hand.gaf), expected results by hand.

The ontology (all biological_process, root GO:0000001 "BP"):

    BP -- A (GO:2) -- C (GO:4): g1 g2 g3, g13 (IGI)
     |     |-------- D (GO:5): g4 g5, g14 (NOT: excluded at read)
     |     |         E (GO:6): g7 g8, g15 (dated 2020-01-01); is_a B and part_of A
     |     '  g6
     |-- B (GO:3) -- E
     |     '-------- F (GO:7): g9 -- G (GO:8): g9 g10
     |-- I (GO:10, alt_id GO:11): g11 (via the alt id) g12
     '-- K (GO:13, also "regulates" A, not an edge): g16
    obsolete GO:12: g1 (counted, dropped)

Contained genes after IGI exclusion: C 3, D 2, E 3, G 2, F 2, I 2, K 1, A 9, B 5, BP 14.
"""
from __future__ import annotations

import pytest

from dcell_core.ontology.build import build_hierarchy
from dcell_core.ontology.filters import EmptyHierarchyError, FilterState, transitive_reduction
from dcell_core.ontology.config import SYNTHETIC_ROOT

A, B, C, D, E, F, G, I, K, BP = ("GO:0000002", "GO:0000003", "GO:0000004", "GO:0000005", "GO:0000006",
                                  "GO:0000007", "GO:0000008", "GO:0000010", "GO:0000013", "GO:0000001")


def structure(h):
    """{term: (sorted child ids, sorted direct gene names)}"""
    return {h.terms[t]: (sorted(h.terms[c] for c in h.children[t]), sorted(h.genes[g] for g in h.direct_genes[t]))
            for t in range(h.num_terms)}


def genes(*ns):
    return sorted(f"g{n}" for n in ns)


def test_default_filters_min3(hand_cfg):
    # containment(3) removes D, G, F, I, K; their genes move to their parents (D->A, G->F->B, I->BP, K->BP);
    # the synthetic root contains exactly BP's genes, so BP is merged into the root by the redundancy step.
    h = build_hierarchy(hand_cfg())
    assert structure(h) == {
        SYNTHETIC_ROOT: ([A, B], genes(11, 12, 16)),
        A: ([C, E], genes(4, 5, 6)),
        B: ([E], genes(9, 10)),
        C: ([], genes(1, 2, 3)),
        E: ([], genes(7, 8, 15)),
    }
    assert h.terms[h.root] == SYNTHETIC_ROOT
    assert dict(zip(h.terms, h.strata)) == {C: 0, E: 0, A: 1, B: 1, SYNTHETIC_ROOT: 2}
    assert h.contained_counts[h.term_index[A]] == 9 and h.contained_counts[h.root] == 14
    scope = h.provenance["scope"]
    assert scope["obsolete_go_id"] == 1  # g1 -> GO:0000012
    assert scope["alt_id_resolved"] == 1  # g11 -> GO:0000011 -> I
    assert h.provenance["annotations"]["excluded_not_qualifier"] == 1  # g14
    assert "g13" not in h.genes and "g14" not in h.genes


def test_subhierarchy_root(hand_cfg):
    # Descendants of A: C, D, E; D (2 genes) removed and g4 g5 move to A.
    h = build_hierarchy(hand_cfg(root=A))
    assert structure(h) == {A: ([C, E], genes(4, 5, 6)), C: ([], genes(1, 2, 3)), E: ([], genes(7, 8, 15))}


def test_removed_term_reconnects_to_all_parents(hand_cfg):
    # With the date cutoff g15 goes, E keeps g7 g8 (< 3) and is removed: its genes go to BOTH parents A and B.
    h = build_hierarchy(hand_cfg(filter_order=["date", "evidence", "containment", "redundancy"],
                                 date_cutoff="2017-07-19"))
    s = structure(h)
    assert E not in s
    assert s[A] == ([C], genes(4, 5, 6, 7, 8))
    assert s[B] == ([], genes(7, 8, 9, 10))
    assert "g15" not in h.genes


def test_remove_term_children_join_every_parent():
    # P1 -> X, P2 -> X, X -> Y, X -> Z: removing X makes Y and Z children of both P1 and P2.
    st = FilterState(
        children={"R": {"P1", "P2"}, "P1": {"X"}, "P2": {"X"}, "X": {"Y", "Z"}, "Y": set(), "Z": set()},
        parents={"R": set(), "P1": {"R"}, "P2": {"R"}, "X": {"P1", "P2"}, "Y": {"X"}, "Z": {"X"}},
        records={"R": set(), "P1": set(), "P2": set(), "X": {("x", "IDA", None)}, "Y": set(), "Z": set()},
        root="R", has_dates=False)
    st.remove_term("X")
    assert st.children["P1"] == {"Y", "Z"} and st.children["P2"] == {"Y", "Z"}
    assert st.parents["Y"] == {"P1", "P2"} and st.parents["Z"] == {"P1", "P2"}
    assert ("x", "IDA", None) in st.records["P1"] and ("x", "IDA", None) in st.records["P2"]
    assert "X" not in st.children and "X" not in st.parents


def test_redundancy_removes_term_equal_to_child(hand_cfg):
    # min_genes=1 keeps everything; F contains {g9, g10} = G's genes, so F goes: G joins B, F's g9 moves to B.
    h = build_hierarchy(hand_cfg(min_genes=1))
    s = structure(h)
    assert F not in s
    assert s[B] == ([E, G], genes(9))
    assert s[G] == ([], genes(9, 10))
    assert BP not in s and s[SYNTHETIC_ROOT][0] == [A, B, I, K]
    # Without the redundancy step F stays, and so does BP under the synthetic root.
    h2 = build_hierarchy(hand_cfg(min_genes=1, filter_order=["evidence", "containment"]))
    assert F in h2.terms and BP in h2.terms


def test_filter_order_changes_result(hand_cfg):
    # min_genes=4: evidence first -> C has 3 genes and is removed; containment first -> C still counts the IGI
    # gene g13 (4 genes), survives, and only then loses g13.
    evidence_first = build_hierarchy(hand_cfg(min_genes=4, filter_order=["evidence", "containment"]))
    containment_first = build_hierarchy(hand_cfg(min_genes=4, filter_order=["containment", "evidence"]))
    assert C not in evidence_first.terms
    assert C in containment_first.terms
    assert sorted(containment_first.genes[g] for g in containment_first.direct_genes[containment_first.term_index[C]]) \
        == genes(1, 2, 3)
    assert evidence_first.fingerprint != containment_first.fingerprint
    logged = [s["step"] for s in containment_first.provenance["filter_log"]]
    assert logged == ["containment", "evidence", "drop_empty"]


def test_evidence_exclusion_is_configurable(hand_cfg):
    h = build_hierarchy(hand_cfg(exclude_evidence=[]))
    assert "g13" in h.genes
    h2 = build_hierarchy(hand_cfg(exclude_evidence=["IGI", "IPI"]))
    assert "g10" not in h2.genes  # g10's only annotation is IPI


def test_transitive_reduction_drops_shortcut_edge():
    st = FilterState(children={"R": {"X", "Y"}, "X": {"Y"}, "Y": set()},
                     parents={"R": set(), "X": {"R"}, "Y": {"R", "X"}},
                     records={"R": set(), "X": set(), "Y": {("y", "IDA", None)}}, root="R", has_dates=False)
    transitive_reduction(st)
    assert st.children == {"R": {"X"}, "X": {"Y"}, "Y": set()}
    assert st.parents["Y"] == {"X"}


def test_empty_after_filters(hand_cfg):
    with pytest.raises(EmptyHierarchyError, match="GO:0000002 contains 9 genes, fewer than min_genes=50"):
        build_hierarchy(hand_cfg(root=A, min_genes=50))


def test_date_filter_needs_dates():
    from dcell_core.ontology.config import OntologyConfig

    cfg = OntologyConfig(root="GO:0006281", filter_order=["date", "evidence", "containment"], date_cutoff="2017-07-19")
    with pytest.raises(ValueError, match="needs an annotation source with dates"):
        build_hierarchy(cfg)


@pytest.mark.parametrize("kw, message", [
    (dict(filter_order=["evidence", "bogus"]), "unknown step"),
    (dict(filter_order=["evidence", "evidence"]), "listed twice"),
    (dict(date_cutoff="2017-07-19"), "set date_cutoff exactly when"),
    (dict(filter_order=["date"], date_cutoff="19-07-2017"), "YYYY-MM-DD"),
    (dict(root="DNA repair"), "root: expected a GO id"),
    (dict(min_genes=0), "min_genes"),
    (dict(namespaces=["biological_process", "bp"]), "namespaces"),
])
def test_config_validation(hand_cfg, kw, message):
    with pytest.raises(ValueError, match=message):
        hand_cfg(**kw).validate()
