from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
PYTHON = sys.executable


@pytest.fixture
def hand_cfg():
    """OntologyConfig over the hand-made ontology (tests/data/ontology/hand.obo + hand.gaf)."""
    from dcell_core.ontology.config import OntologyConfig

    def make(**kw):
        base = dict(obo=str(DATA / "ontology" / "hand.obo"), annotations=str(DATA / "ontology" / "hand.gaf"),
                    annotation_source="gaf", min_genes=3)
        base.update(kw)
        return OntologyConfig(**base)

    return make


@pytest.fixture
def subprocess_env(tmp_path):
    """Environment for CLI subprocesses: private cache dir, repo on the path."""
    env = dict(os.environ)
    env["DCELL_CACHE_DIR"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls when the 2 shared cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
