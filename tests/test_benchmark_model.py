r"""benchmarks/model.py's perturbation floor: perturbed (term, sample) counts and the effective batch.

Hand-made DAG (stratum in brackets); B has two parents and g2 sits on both A and B:

    R [2] -- C [1] (g4) -- A [0] (g1 g2)
          |             \- B [0] (g2 g3)
          \- D [1] (g5) -- B
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from benchmarks.model import cpu_flags, cpu_model, effective_batch, paired_ratio, perturbed_counts
from dcell_core.nn import ModelConfig, build_dcell
from dcell_core.ontology.hierarchy import Hierarchy

H = Hierarchy.from_mappings({"R": ["C", "D"], "C": ["A", "B"], "D": ["B"]},
                            {"A": ["g1", "g2"], "B": ["g2", "g3"], "C": ["g4"], "D": ["g5"]})
# disrupted genes per sample, and the terms each one perturbs (by hand, through the subtrees above)
SAMPLES = [["g1"], ["g3"], ["g5"], ["g2", "g4"], [], ["g4"]]
N = {"A": 2, "B": 2, "C": 4, "D": 3, "R": 5}  # A: s0 s3; B: s1 s3; C: s0 s1 s3 s5; D: s1 s2 s3; R: all but s4


def _x() -> torch.Tensor:
    x = torch.zeros(len(SAMPLES), H.num_genes)
    for b, genes in enumerate(SAMPLES):
        x[b, [H.gene_index[g] for g in genes]] = 1.0
    return x


def _per_term(oracle) -> dict[str, int]:
    return {name: sum(p.numel() for p in oracle.terms[t].parameters()) for t, name in enumerate(H.terms)}


def test_perturbed_counts_match_a_hand_count():
    oracle = build_dcell(H, ModelConfig(), fast=False)
    assert dict(zip(H.terms, perturbed_counts(oracle.sizes, _x()).tolist())) == N


@pytest.mark.parametrize("embedding_dim", [0, 2])
def test_effective_batch_weights_terms_by_parameters(embedding_dim):
    oracle = build_dcell(H, ModelConfig(learnable_embedding_dim=embedding_dim), fast=False)
    per_term = _per_term(oracle)
    extra = H.num_genes * embedding_dim  # the embedding counts at the full batch
    assert extra == sum(p.numel() for p in oracle.parameters()) - sum(per_term.values())
    work = sum(per_term[t] * (N[t] + 1) for t in H.terms) + extra * len(SAMPLES)
    expected = math.ceil(work / (sum(per_term.values()) + extra))
    assert effective_batch(oracle, _x()) == expected
    assert 1 < expected <= len(SAMPLES) + 1


def test_no_disruption_leaves_one_wild_type_row():
    oracle = build_dcell(H, ModelConfig(), fast=False)
    assert effective_batch(oracle, torch.zeros(4, H.num_genes)) == 1


def test_cpu_flags_are_vector_extensions():
    flags = cpu_flags()
    assert flags == sorted(flags)
    assert all(f in ("sse4_2", "avx", "avx2", "fma", "f16c") or f.startswith(("avx512", "amx")) for f in flags)


def test_cpu_model_tells_generations_apart():
    # "AMD EPYC" names Zen 4 and Zen 5 machines alike; the family and model numbers tell them apart
    name, _, numbers = cpu_model().rpartition(" (")
    assert name and name in Path("/proc/cpuinfo").read_text()
    family, model = re.fullmatch(r"family (\d+), model (\d+)\)", numbers).groups()
    assert int(family) > 0 and int(model) >= 0


def test_paired_ratio_divides_within_rounds():
    # round 3 is slow for both alike and keeps the median ratio; the best-of ratio pairs round 1's fast time
    # with round 5's floor
    fast, floor = [2.0, 2.2, 3.3, 2.4, 2.1], [1.1, 1.0, 1.65, 1.2, 0.7]
    median, q25, q75 = paired_ratio(fast, floor)
    ratios = sorted(f / d for f, d in zip(fast, floor))  # 1.82, 2.0, 2.0, 2.2, 3.0
    assert median == pytest.approx(ratios[2]) and median == pytest.approx(2.0)
    assert q25 == pytest.approx(ratios[1]) and q75 == pytest.approx(ratios[3])
    assert min(fast) / min(floor) == pytest.approx(2.0 / 0.7)  # the best-of ratio mixes rounds 1 and 5


@pytest.mark.parametrize("fast, floor", [([1.0, 2.0], [1.0]), ([], [])])
def test_paired_ratio_refuses_unpaired_lists(fast, floor):
    with pytest.raises(ValueError, match="equally long, non-empty"):
        paired_ratio(fast, floor)
