"""A search end to end on a real-screen data config: data=kuzmin2018 reading a file in the Kuzmin release format
(written here: tab-separated, CRLF, double-mutant queries with the hoΔ marker, digenic and trigenic rows), on the
paper's hierarchy built over the screen's genes. Real local Ray and a real sqlite MLflow store.
"""
from __future__ import annotations

import numpy as np
import pytest

import helpers
from helpers import env_for, runs_of, steps

pytestmark = pytest.mark.slow

KUZMIN_HEADER = ["Query strain ID", "Query allele name", "Array strain ID", "Array allele name", "Combined mutant type",
                 "Raw genetic interaction score (epsilon)", "Adjusted genetic interaction score (epsilon or tau)",
                 "P-value", "Query single/double mutant fitness", "Array single mutant fitness",
                 "Double/triple mutant fitness", "Double/triple mutant fitness standard deviation"]
MARKER = "YDL227C"


def write_kuzmin_screen(path, genes: list[str], rows: int, seed: int) -> None:
    """Digenic (query gene + hoΔ marker x array gene) and trigenic (two query genes x array gene) rows whose fitness
    is a product of per-gene effects with noise, so a model has something to learn."""
    rng = np.random.default_rng(seed)
    effect = dict(zip(genes, rng.uniform(0.6, 1.0, len(genes))))
    lines = ["\t".join(KUZMIN_HEADER)]
    for i in range(rows):
        trigenic = i % 3 == 0
        picked = list(rng.choice(genes, 3 if trigenic else 2, replace=False))
        query = f"{picked[0]}+{picked[1] if trigenic else MARKER}_tm{i}"
        fitness = float(np.prod([effect[g] for g in picked]) + rng.normal(0, 0.02))
        lines.append("\t".join([query, "q", f"{picked[-1]}_dma{i}", "a", "trigenic" if trigenic else "digenic",
                                "-0.05", "-0.05", "0.01", "0.9", "0.9", f"{fitness:.4f}", "0.02"]))
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())


def test_search_on_a_kuzmin_format_screen(tmp_path):
    from dcell_core.config import compose
    from dcell_core.data import load_run_data

    repair = load_run_data(compose(["data=yeast_dna_repair", f"cache_dir={tmp_path / 'cache'}"])).hierarchy
    genes = sorted(np.random.default_rng(0).choice(sorted(repair.genes), 80, replace=False))
    screen = tmp_path / "aao1729_Data_S1.tsv"
    write_kuzmin_screen(screen, [str(g) for g in genes], rows=2400, seed=1)
    f = helpers.search_file(tmp_path, "kuzmin", 2, {"train.lr": {"grid": [0.01, 0.003]}}, max_concurrent=2)
    spec = f.read_text().replace("data=yeast_dna_repair", "data=kuzmin2018")
    f.write_text(spec.replace("- data.genotypes.num_doubles=1500\n", "").replace("- data.genotypes.num_triples=300\n", ""))
    project = tmp_path / "project"
    r = helpers.run_python("-m", "platform.search", str(f), f"data.genotypes.path={screen}", "--project-dir",
                           str(project), env=env_for(tmp_path / "cache"), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    uri = f"sqlite:///{project / 'mlflow.db'}"
    (parent,), children = runs_of(uri, "kuzmin")
    assert parent.info.status == "FINISHED" and parent.data.params["data"] == "kuzmin2018"
    assert 6 <= int(parent.data.params["genes"]) <= 80  # the screen's genes that the paper's filters keep
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    for c in children:
        assert steps(uri, c.info.run_id) == [1, 2] and np.isfinite(c.data.metrics["val/pearson"])
