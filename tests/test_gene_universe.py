"""The gene universe (data.ontology.gene_universe) on the hand-made ontology, expected results by hand.

hand.gaf annotates g1..g13, g15 and g16 (g14's only line is NOT-qualified; see test_ontology_filters.py for the
ontology). With min_genes=3 and IGI excluded, the universe U = {g1 g2 g3 g4 g7 g8 g9 g10 g13 g15 gX} gives:

    contained over U: C {g1 g2 g3} 3, D {g4} 1, E {g7 g8 g15} 3, F = G {g9 g10} 2, I 0, K 0, A 7, B 5, BP 9
    containment(3) removes D (g4 -> A), G (g9 g10 -> F), F (-> B), I and K; redundancy merges BP into the root.

g5, g6, g11, g12 and g16 are outside U (their 5 records dropped before the filters); gX has no annotation at all;
g13's only annotation is IGI, so it is annotated but not in the hierarchy.
"""
from __future__ import annotations

import json

import pytest
import torch

from dcell_core.ontology.build import build_hierarchy, fingerprint
from dcell_core.ontology.config import SYNTHETIC_ROOT
from dcell_core.ontology.universe import GeneListError, read_gene_list
from helpers import DATA, env_for, run_python

A, B, C, E = "GO:0000002", "GO:0000003", "GO:0000004", "GO:0000006"
UNIVERSE = ["g1", "g2", "g3", "g4", "g7", "g8", "g9", "g10", "g13", "g15", "gX"]


def structure(h):
    return {h.terms[t]: (sorted(h.terms[c] for c in h.children[t]), sorted(h.genes[g] for g in h.direct_genes[t]))
            for t in range(h.num_terms)}


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def universe_file(tmp_path):
    return write(tmp_path / "genes.txt", "# hand universe\n\n" + "\n".join(UNIVERSE) + "\n")


def test_universe_sets_genes_containment_and_structure(hand_cfg, universe_file):
    h = build_hierarchy(hand_cfg(gene_universe=str(universe_file)))
    assert structure(h) == {
        SYNTHETIC_ROOT: ([A, B], []),
        A: ([C, E], ["g4"]),
        B: ([E], ["g10", "g9"]),
        C: ([], ["g1", "g2", "g3"]),
        E: ([], ["g15", "g7", "g8"]),
    }
    assert set(h.genes) == set(UNIVERSE) - {"gX", "g13"}
    counts = dict(zip(h.terms, h.contained_counts))
    assert counts == {SYNTHETIC_ROOT: 9, A: 7, B: 5, C: 3, E: 3}
    assert h.provenance["scope"]["outside_universe"] == 5  # g5 g6 g11 g12 g16, one record each


def test_universe_counts_are_reported(hand_cfg, universe_file):
    h = build_hierarchy(hand_cfg(gene_universe=str(universe_file)))
    u = h.provenance["universe"]
    assert (u["kind"], u["source"], u["genes"]) == ("file", str(universe_file), len(UNIVERSE))
    assert (u["annotated"], u["unannotated"], u["unannotated_examples"]) == (10, 1, ["gX"])
    assert (u["in_hierarchy"], u["not_in_hierarchy"]) == (9, 2)  # gX (no annotation), g13 (IGI only)
    assert u["annotated_genes_outside"] == 5
    full = build_hierarchy(hand_cfg()).provenance["universe"]
    assert (full["kind"], full["genes"], full["unannotated"]) == ("annotated", 15, 0)
    assert full["annotated_genes_outside"] == 0


def test_universe_sets_widths_and_model_inputs(hand_cfg, universe_file):
    from dcell_core.nn.build import build_dcell
    from dcell_core.nn.config import ModelConfig

    full = build_hierarchy(hand_cfg())
    h = build_hierarchy(hand_cfg(gene_universe=str(universe_file)))
    # Width = contained genes of the universe (ratio 1, no minimum), and the root's changes with it.
    assert h.widths(ratio=1.0, min_width=1) == list(h.contained_counts)
    assert h.widths(ratio=1.0, min_width=1)[h.root] == 9 and full.widths(ratio=1.0, min_width=1)[full.root] == 14
    assert h.parameter_count(ratio=1.0, min_width=1) < full.parameter_count(ratio=1.0, min_width=1)
    model = build_dcell(h, ModelConfig(width_ratio=1.0, min_width=1))
    model.eval()
    assert model(torch.zeros(2, 9)).prediction.shape == (2,)
    with pytest.raises(ValueError, match=r"\[B, 9\]"):
        model(torch.zeros(2, full.num_genes))


def test_fingerprint_follows_the_gene_list(hand_cfg, universe_file, tmp_path):
    fp_file, key = fingerprint(hand_cfg(gene_universe=str(universe_file)))
    assert key["gene_universe"]["kind"] == "file"
    # Same genes in another order, with comments, in another place: same fingerprint.
    (tmp_path / "other").mkdir()
    shuffled = write(tmp_path / "other" / "x.txt", "# reordered\n" + "\n".join(reversed(UNIVERSE)) + "  # comment\n")
    assert fingerprint(hand_cfg(gene_universe=str(shuffled)))[0] == fp_file
    fewer = write(tmp_path / "fewer.txt", "\n".join(UNIVERSE[:-1]) + "\n")
    assert fingerprint(hand_cfg(gene_universe=str(fewer)))[0] != fp_file
    assert fingerprint(hand_cfg())[0] != fp_file
    # The dataset kind with the same genes is another universe kind, and another fingerprint.
    fp_dataset, key_dataset = fingerprint(hand_cfg(gene_universe="dataset"), dataset_genes=frozenset(UNIVERSE))
    assert key_dataset["gene_universe"]["genes_sha256"] == key["gene_universe"]["genes_sha256"]
    assert fp_dataset != fp_file
    # A relative file name is taken from base_dir.
    assert fingerprint(hand_cfg(gene_universe="genes.txt"), base_dir=universe_file.parent)[0] == fp_file


def test_dataset_universe_builds_like_the_same_gene_file(hand_cfg, universe_file):
    h = build_hierarchy(hand_cfg(gene_universe="dataset"), dataset_genes=frozenset(UNIVERSE))
    assert structure(h) == structure(build_hierarchy(hand_cfg(gene_universe=str(universe_file))))
    assert h.provenance["universe"]["kind"] == "dataset" and h.provenance["universe"]["unannotated"] == 1
    with pytest.raises(ValueError, match="gene_universe='dataset' needs the genes of the configured genotype data"):
        build_hierarchy(hand_cfg(gene_universe="dataset"))
    with pytest.raises(ValueError, match="dataset genes were given, but data.ontology.gene_universe='annotated'"):
        build_hierarchy(hand_cfg(), dataset_genes=frozenset(UNIVERSE))


@pytest.mark.parametrize("text, line, problem", [
    ("g1\ng2 g3\n", 2, "expected one gene per line, found 2 fields: 'g2 g3'"),
    ("# c\ng1\n\ng2;g3\n", 4, "not a gene name: 'g2;g3'"),
    ("g1\ng2\ng1\n", 3, r"gene listed twice \(first on line 1\): 'g1'"),
])
def test_bad_universe_file_names_file_and_line(hand_cfg, tmp_path, text, line, problem):
    bad = write(tmp_path / "bad.txt", text)
    with pytest.raises(GeneListError, match=rf"gene universe file {bad}, line {line}: {problem}"):
        build_hierarchy(hand_cfg(gene_universe=str(bad)))


def test_empty_missing_or_foreign_universe_file(hand_cfg, tmp_path):
    empty = write(tmp_path / "empty.txt", "# nothing here\n\n")
    with pytest.raises(GeneListError, match=rf"gene universe file {empty}: lists no gene"):
        read_gene_list(empty)
    with pytest.raises(FileNotFoundError, match=r"gene universe file not found: .*nope\.txt"):
        fingerprint(hand_cfg(gene_universe="nope.txt"), base_dir=tmp_path)
    foreign = write(tmp_path / "upper.txt", "G1\nG2\n")  # hand.gaf's genes are lower-case
    with pytest.raises(ValueError, match=r"none of its 2 genes \(e.g. 'G1'\) has a GO annotation"):
        build_hierarchy(hand_cfg(gene_universe=str(foreign)))


def test_containment_genes_is_refused_with_what_to_write(hand_cfg):
    with pytest.raises(ValueError, match="containment_genes: 'dataset': this setting was removed; write "
                                         "data.ontology.gene_universe=dataset instead"):
        hand_cfg(containment_genes="dataset").validate()


def hand_overrides(tmp_path, genotypes: str | None) -> list[str]:
    out = [f"data.ontology.obo={DATA / 'ontology' / 'hand.obo'}",
           f"data.ontology.annotations={DATA / 'ontology' / 'hand.gaf'}", "data.ontology.annotation_source=gaf",
           "data.ontology.root=null", "data.ontology.min_genes=3", "data.ontology.gene_universe=dataset",
           f"cache_dir={tmp_path / 'cache'}"]
    if genotypes is not None:
        out += ["data.genotypes.source=table", f"data.genotypes.path={genotypes}", "data.genotypes.drop_unknown=true",
                "data.genotypes.val_fraction=0.0", "data.genotypes.test_fraction=0.0"]
    return out


def test_dataset_universe_from_a_genotype_table(tmp_path):
    from dcell_core.config import compose
    from dcell_core.data import load_run_data, load_run_hierarchy

    rows = ["g1+g2", "g3+g4", "g7+g8", "g15+g9", "g10+g13", "g1+gX"]  # the genes of UNIVERSE
    table = write(tmp_path / "geno.csv", "genes,fitness\n" + "".join(f"{r},0.{i}\n" for i, r in enumerate(rows)))
    cfg = compose(hand_overrides(tmp_path, str(table)))
    h = load_run_hierarchy(cfg, None)
    assert set(h.genes) == set(UNIVERSE) - {"gX", "g13"}
    assert h.provenance["universe"]["unannotated_examples"] == ["gX"]
    data = load_run_data(cfg)
    assert data.hierarchy.fingerprint == h.fingerprint and data.dataset.num_genes == 9
    assert len(data.dataset) == len(rows) - 2  # the rows naming gX and g13 (not in the hierarchy) are dropped


def test_dataset_universe_refuses_simulated_genotypes(tmp_path):
    from dcell_core.config import compose
    from dcell_core.data import load_run_hierarchy

    with pytest.raises(ValueError, match="data.genotypes.source=simulate: the simulator draws its genotypes from "
                                         "the hierarchy's genes"):
        load_run_hierarchy(compose(hand_overrides(tmp_path, None)), None)


def test_cli_says_what_to_write_for_removed_or_unusable_settings(tmp_path):
    env = env_for(tmp_path / "cache")
    for args, needle in [(["data.ontology.containment_genes=dataset"], "write data.ontology.gene_universe=dataset"),
                         (["data.ontology.gene_universe=dataset"], "gene_universe=dataset needs genotypes read from"),
                         (["data=yeast_go_paper"], "gene_universe=dataset needs genotypes read from")]:
        r = run_python("-m", "dcell_core.ontology", *args, env=env)
        assert r.returncode == 2 and needle in r.stderr, (args, r.returncode, r.stderr[-2000:])


# The DCell paper's yeast hierarchy (Ma et al. 2018): 2,526 terms, 97,181 neurons, widths 20 to 1,075; a root
# width of 1,075 = ceil(0.3 x genes) means 3,580 to 3,583 genes, hence the 3,582-gene universe.
PAPER_TERMS, PAPER_NEURONS, PAPER_ROOT_WIDTH, PAPER_GENES = 2526, 97181, 1075, 3582


def test_paper_hierarchy_over_a_seeded_3582_gene_universe(tmp_path):
    """The documented command: scripts/sample_universe.py, then the ontology CLI on yeast_go_paper with that file."""
    from dcell_core.ontology.hierarchy import paper_width

    env = env_for(tmp_path / "cache")
    genes = tmp_path / "genes.txt"
    r = run_python("scripts/sample_universe.py", "--out", str(genes), "--size", str(PAPER_GENES), "--seed", "0",
                   env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(read_gene_list(genes)) == PAPER_GENES
    r = run_python("-m", "dcell_core.ontology", "data=yeast_go_paper", f"data.ontology.gene_universe={genes}",
                   "--json", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert [s["step"] for s in out["filters"]] == ["evidence", "containment", "redundancy", "drop_empty"]
    assert out["genes"] == PAPER_GENES and out["universe"]["unannotated"] == 0
    assert abs(out["terms"] - PAPER_TERMS) <= 0.1 * PAPER_TERMS, out["terms"]
    assert abs(out["neurons"] - PAPER_NEURONS) <= 0.1 * PAPER_NEURONS, out["neurons"]
    assert out["root_width"] == out["max_width"] == paper_width(PAPER_GENES) == PAPER_ROOT_WIDTH
    assert out["min_width"] == 20


KUZMIN_HEADER = ["Query strain ID", "Query allele name", "Array strain ID", "Array allele name", "Combined mutant type",
                 "Raw genetic interaction score (epsilon)", "Adjusted genetic interaction score (epsilon or tau)",
                 "P-value", "Query single/double mutant fitness", "Array single mutant fitness",
                 "Double/triple mutant fitness", "Double/triple mutant fitness standard deviation"]


def test_kuzmin_data_config_builds_the_paper_hierarchy_over_the_screen_genes(tmp_path):
    """data=kuzmin2018 (yeast_go_paper, gene_universe=dataset) on a small file in the release format: the
    hierarchy's genes are the screen's, without the hoΔ marker (YDL227C); an ORF without annotation is counted."""
    from dcell_core.config import cache_dir, compose
    from dcell_core.data import load_run_data, load_run_hierarchy
    from dcell_core.ontology import read_sgd_genbank, resolve_path

    usable = sorted({r.gene for r in read_sgd_genbank(resolve_path("snapshot:sgd_go.gb.gz")).records
                     if r.evidence not in ("IGI", "ND")} - {"YDL227C"})
    a, b, c, d, e, f, g, h8 = usable[:8]
    rows = [(f"{a}+YDL227C_tm1", f"{b}_dma1", "digenic"), (f"{c}+YDL227C_tm2", f"{d}_dma2", "digenic"),
            (f"{e}+{f}_tm3", f"{g}_dma3", "trigenic"), (f"{a}+{c}_tm4", f"{h8}_dma4", "trigenic"),
            (f"{b}+YDL227C_tm5", "YZZ999W_dma5", "digenic")]  # YZZ999W: an ORF-shaped name without annotation
    lines = ["\t".join(KUZMIN_HEADER)] + ["\t".join([q, "x", arr, "y", kind, "-0.1", "-0.1", "0.01", "0.9", "0.9",
                                                     "0.7", "0.02"]) for q, arr, kind in rows]
    screen = tmp_path / "aao1729_Data_S1.tsv"
    screen.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    cfg = compose(["data=kuzmin2018", f"data.genotypes.path={screen}", f"cache_dir={tmp_path / 'cache'}"])
    hierarchy = load_run_hierarchy(cfg, cache_dir(cfg))
    u = hierarchy.provenance["universe"]
    assert (u["kind"], u["genes"], u["unannotated_examples"]) == ("dataset", 9, ["YZZ999W"])
    assert set(hierarchy.genes) <= set(usable[:8]) and "YDL227C" not in hierarchy.genes
    assert u["in_hierarchy"] == hierarchy.num_genes >= 6
    data = load_run_data(cfg)
    assert data.hierarchy.fingerprint == hierarchy.fingerprint
    kept = [q for q, arr, _ in rows
            if set(q.split("_")[0].split("+") + [arr.split("_")[0]]) - {"YDL227C"} <= set(hierarchy.genes)]
    assert len(data.dataset) == len(kept) < len(rows)  # rows naming genes outside the hierarchy (YZZ999W) dropped
