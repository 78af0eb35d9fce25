"""Hierarchy invariants, conversions, and the fingerprint-keyed cache."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from dcell_core.ontology import Hierarchy, HierarchyError, load_hierarchy, paper_width
from dcell_core.ontology.cache import atomic_write_bytes, hierarchy_cache_path


def small():
    # R -> {X, Y}, X -> {Y}: strata Y 0, X 1, R 2; widths by contained genes (ratio 0.5, min 1)
    return Hierarchy.from_mappings(children={"R": ["X", "Y"], "X": ["Y"]},
                                   direct_genes={"Y": ["a", "b"], "X": ["c"], "R": ["d", "a"]},
                                   provenance={"fingerprint": "f"})


def test_strata_order_and_counts():
    h = small()
    assert h.terms == ("Y", "X", "R") and h.strata == (0, 1, 2) and h.root == 2
    assert h.genes == ("a", "b", "c", "d")
    assert h.contained_counts == (2, 3, 4)
    assert h.stratum_sizes() == [1, 1, 1]
    assert h.widths("contained", ratio=0.5, min_width=1) == [1, 2, 2]
    assert h.widths("direct", ratio=0.5, min_width=1) == [1, 1, 1]
    # parameters: Y: 1*(2+1)+1+1=5; X: 2*(1+1+1)+2+1=9; R: 2*(2+1+2+1)+2+1=15
    assert h.parameter_count("contained", ratio=0.5, min_width=1) == 29


def test_paper_width_rule():
    assert paper_width(6) == 20 and paper_width(66) == 20 and paper_width(67) == 21 and paper_width(100) == 30
    assert paper_width(1000) == 300  # ceil(300.0) must not round up to 301


@pytest.mark.parametrize("children, genes, message", [
    ({"R": ["X"], "X": ["R"]}, {"X": ["a"]}, "cycle in hierarchy through term"),
    ({"R": ["X"], "S": ["X"]}, {"X": ["a"]}, "exactly one root, found 2: R, S"),
    ({"R": ["X"]}, {"R": ["a"]}, "term X has neither child terms nor genes"),
])
def test_invalid_structures_name_the_term(children, genes, message):
    with pytest.raises(HierarchyError, match=message):
        Hierarchy.from_mappings(children=children, direct_genes=genes)


def test_index_checks():
    with pytest.raises(HierarchyError, match="term X has gene index 5 out of range"):
        Hierarchy(terms=("X",), names=("X",), children=((),), direct_genes=((5,),), genes=("a",))
    with pytest.raises(HierarchyError, match="gene b is annotated to no term"):
        Hierarchy(terms=("X",), names=("X",), children=((),), direct_genes=((0,),), genes=("a", "b"))
    with pytest.raises(HierarchyError, match="term R has child index 7 out of range"):
        Hierarchy(terms=("R",), names=("R",), children=((7,),), direct_genes=((0,),), genes=("a",))


def test_immutable_and_json_roundtrip():
    h = small()
    with pytest.raises(AttributeError):
        h.terms = ()
    back = Hierarchy.from_json(h.to_json())
    assert back == h and back.strata == h.strata and back.fingerprint == "f"


def test_hetero_data():
    data = small().to_hetero_data()
    assert data["gene"].num_nodes == 4 and data["term"].num_nodes == 3
    ann = data["gene", "annotated_to", "term"].edge_index
    kid = data["term", "child_of", "term"].edge_index
    # gene a (0) -> Y (0) and R (2); term Y (0) child_of X (1) and R (2); X (1) child_of R (2)
    assert sorted(map(tuple, ann.T.tolist())) == [(0, 0), (0, 2), (1, 0), (2, 1), (3, 2)]
    assert sorted(map(tuple, kid.T.tolist())) == [(0, 1), (0, 2), (1, 2)]
    assert data["term"].stratum.tolist() == [0, 1, 2]


def test_cache_hit_change_and_atomicity(hand_cfg, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    h1 = load_hierarchy(hand_cfg(), cache)
    path = hierarchy_cache_path(cache, h1.fingerprint)
    assert path.exists()
    # A second load reads the cache file: an edit that also updates the recorded hash shows up in the loaded
    # hierarchy (an edit without it is rebuilt: tests/test_cache_integrity.py).
    head, payload = path.read_bytes().split(b"\n", 1)
    doc = json.loads(payload)
    doc["names"][0] = "edited in cache"
    body = json.dumps(doc).encode()
    header = {**json.loads(head), "sha256": hashlib.sha256(body).hexdigest()}
    path.write_bytes(json.dumps(header).encode() + b"\n" + body)
    assert load_hierarchy(hand_cfg(), cache).names[0] == "edited in cache"
    # A changed setting has another fingerprint and rebuilds.
    h2 = load_hierarchy(hand_cfg(min_genes=1), cache)
    assert h2.fingerprint != h1.fingerprint and h2.num_terms > h1.num_terms
    assert hierarchy_cache_path(cache, h2.fingerprint).exists()
    # A crash while replacing a cache file leaves the old file intact; a crashed cold build leaves no file;
    # neither leaves a temporary file behind.
    old = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"half a hierarchy")
    assert path.read_bytes() == old
    path.unlink()
    with pytest.raises(OSError, match="disk full"):
        load_hierarchy(hand_cfg(), cache)
    assert not path.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{h2.fingerprint}.json"]


def test_fingerprint_tracks_file_content(hand_cfg, tmp_path):
    from shutil import copy

    from dcell_core.ontology import fingerprint

    gaf = tmp_path / "hand.gaf"
    copy(hand_cfg().annotations, gaf)
    fp1, key = fingerprint(hand_cfg(annotations=str(gaf)))
    assert key["obo_data_version"] == "releases/2000-01-01"
    assert [f["step"] for f in key["filters"]] == ["evidence", "containment", "redundancy", "transitive_reduction"]
    gaf.write_text(gaf.read_text().replace("g16", "g17"))
    assert fingerprint(hand_cfg(annotations=str(gaf)))[0] != fp1
