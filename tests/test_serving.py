r"""Production checkpoints, prediction, subsystem ranking, atomic installation and winner selection (fast).

Hand-made hierarchy (stratum in brackets; direct genes in parentheses):

    R [2] (g5)
    |-- A [1] (g3) -- D [0] (g1 g2)
    \-- B [1] ------- E [0] (g4 g6)

A genotype's change can only reach the terms that contain one of its genes: disrupting g4 alone moves E, B and
R, and leaves D and A exactly where the wild type has them.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from dcell_core.fileio import file_sha256
from dcell_core.ontology.hierarchy import Hierarchy
from dcell_core.serving import checkpoint as ck
from dcell_core.serving.checkpoint import CheckpointError, FingerprintMismatch, load_checkpoint, write_checkpoint
from dcell_core.serving.inference import (UnknownGenesError, encode_genotypes, predict, subsystem_changes,
                                          top_subsystems)
from dcell_core.serving.install import InstallError, install
from helpers import REPO, run_python

MODEL = ["model.min_width=3", "model.width_ratio=1.0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def hand_hierarchy(fingerprint: str = "hand0001", extra_gene: bool = False) -> Hierarchy:
    genes = {"D": ["g1", "g2"], "A": ["g3"], "E": ["g4", "g6"], "R": ["g5"]}
    if extra_gene:
        genes["E"] = [*genes["E"], "g7"]
    return Hierarchy.from_mappings({"R": ["A", "B"], "A": ["D"], "B": ["E"]}, genes,
                                   names={"R": "root", "A": "alpha", "B": "beta", "D": "delta", "E": "epsilon"},
                                   provenance={"fingerprint": fingerprint})


@pytest.fixture(scope="module")
def trained():
    """A hand model after a few train-mode steps (so the batch-norm statistics are not the initial ones)."""
    from dcell_core.config import compose
    from dcell_core.nn import ModelConfig, build_dcell
    from dcell_core.serving.checkpoint import model_config

    cfg = compose(MODEL)
    h = hand_hierarchy()
    torch.manual_seed(0)
    model = build_dcell(h, model_config(cfg, "test"))
    assert isinstance(model_config(cfg, "test"), ModelConfig)
    with torch.no_grad():
        for _ in range(3):
            model(torch.bernoulli(torch.full((16, h.num_genes), 0.3)))
    return SimpleNamespace(cfg=cfg, hierarchy=h, model=model.eval())


def write(trained, directory: Path, weights=None) -> Path:
    directory.mkdir(parents=True)
    write_checkpoint(directory, weights=weights if weights is not None else trained.model.state_dict(),
                     config=trained.cfg, hierarchy=trained.hierarchy, metrics={"final": {"val/pearson": 0.5}},
                     source={"run_id": "r" * 32}, metric={"name": "val/pearson", "mode": "max", "value": 0.5},
                     card="# card\n")
    return directory


def rehash(directory: Path, name: str) -> None:
    """Record a file's new hash in the manifest, as a hostile but self-consistent checkpoint would."""
    info = json.loads((directory / ck.INFO).read_text())
    info["files"][name] = file_sha256(directory / name)
    (directory / ck.INFO).write_text(json.dumps(info))


def test_roundtrip_rebuilds_the_exact_model(trained, tmp_path):
    path = write(trained, tmp_path / "ck")
    loaded = load_checkpoint(path)
    x = torch.bernoulli(torch.full((32, trained.hierarchy.num_genes), 0.3))
    want, got = trained.model(x, return_states=True), loaded.model(x, return_states=True)
    for a, b in zip(want, got):
        assert torch.equal(a, b)
    assert loaded.hierarchy == trained.hierarchy and loaded.fingerprint == "hand0001"
    assert loaded.info["source"]["run_id"] == "r" * 32 and loaded.metrics["final"]["val/pearson"] == 0.5
    assert not loaded.model.training
    genes = [("g1", "g4"), ("g6",)]
    assert loaded.predict(genes).tolist() == predict(trained.model, encode_genotypes(genes, trained.hierarchy)).tolist()
    assert load_checkpoint(path, hierarchy=hand_hierarchy(), fingerprint="hand0001").fingerprint == "hand0001"


class Payload:
    """Unpickling this runs code: it creates the file named by `marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("kind", ["raw_pickle", "torch_save"])
def test_pickled_weights_are_refused_and_never_unpickled(trained, tmp_path, kind):
    path = write(trained, tmp_path / "ck")
    marker = tmp_path / "payload_ran"
    payload = {"weights": trained.model.state_dict(), "hook": Payload(str(marker))}
    if kind == "raw_pickle":
        (path / ck.WEIGHTS).write_bytes(pickle.dumps(payload, protocol=4))
    else:
        torch.save(payload, path / ck.WEIGHTS)
    rehash(path, ck.WEIGHTS)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_garbage_weights_and_changed_files_are_refused(trained, tmp_path):
    path = write(trained, tmp_path / "ck")
    config = (path / ck.CONFIG).read_text()
    (path / ck.CONFIG).write_text(config.replace("min_width: 3", "min_width: 4"))
    with pytest.raises(CheckpointError, match="config.yaml has SHA-256"):
        load_checkpoint(path)
    (path / ck.CONFIG).write_text(config)
    (path / ck.WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    rehash(path, ck.WEIGHTS)
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint.json"):
        load_checkpoint(tmp_path)


def test_shape_and_dtype_mismatches_are_refused(trained, tmp_path):
    path = write(trained, tmp_path / "wider")
    (path / ck.CONFIG).write_text((path / ck.CONFIG).read_text().replace("min_width: 3", "min_width: 5"))
    rehash(path, ck.CONFIG)
    with pytest.raises(CheckpointError, match=r"do not fit the model.*head_weight: \(2, 1, 3\) torch.float32 in the weights, "
                                               r"\(2, 1, 5\) torch.float32 in the model"):
        load_checkpoint(path)
    doubles = {k: v.double() if v.is_floating_point() else v for k, v in trained.model.state_dict().items()}
    with pytest.raises(CheckpointError, match="torch.float64 in the weights, .* torch.float32 in the model"):
        load_checkpoint(write(trained, tmp_path / "doubles", doubles))
    fewer = dict(trained.model.state_dict())
    dropped = sorted(fewer)[0]
    del fewer[dropped]
    with pytest.raises(CheckpointError, match=f"missing {dropped}"):
        load_checkpoint(write(trained, tmp_path / "fewer", fewer))


def test_weights_of_another_hierarchy_are_refused(trained, tmp_path):
    path = write(trained, tmp_path / "ck")
    save_file({k: v.contiguous() for k, v in trained.model.state_dict().items()}, str(path / ck.WEIGHTS),
              metadata={"dcell": json.dumps({"format": ck.FORMAT, "fingerprint": "other"})})
    rehash(path, ck.WEIGHTS)
    with pytest.raises(CheckpointError, match="weights carry hierarchy fingerprint 'other'"):
        load_checkpoint(path)


def test_fingerprint_mismatch_is_refused(trained, tmp_path):
    path = write(trained, tmp_path / "ck")
    other = hand_hierarchy("hand0002", extra_gene=True)
    with pytest.raises(FingerprintMismatch, match="hand0001.*fingerprint hand0002"):
        load_checkpoint(path, hierarchy=other)
    with pytest.raises(FingerprintMismatch, match="the given fingerprint has fingerprint feedbeef"):
        load_checkpoint(path, fingerprint="feedbeef")
    with pytest.raises(FingerprintMismatch, match="other genes or terms"):
        load_checkpoint(path, hierarchy=hand_hierarchy("hand0001", extra_gene=True))


def test_encoding_and_unknown_genes(trained):
    h = trained.hierarchy
    x = encode_genotypes([("g1", "g6"), ("g5",)], h)
    assert x.shape == (2, 6) and x.sum().item() == 3
    assert x[0, h.gene_index["g1"]] == 1 and x[0, h.gene_index["g6"]] == 1 and x[1, h.gene_index["g5"]] == 1
    with pytest.raises(UnknownGenesError) as err:
        encode_genotypes([("g1",), ("YFG1", "g2"), ("YFG2", "YFG1")], h)
    assert err.value.unknown == {"YFG1": "genotype 2", "YFG2": "genotype 3"}
    assert "YFG1 (genotype 2), YFG2 (genotype 3)" in str(err.value)
    with pytest.raises(ValueError, match="lists a gene twice"):
        encode_genotypes([("g1", "g1")], h)


def test_subsystem_changes_reach_only_the_terms_containing_the_genes(trained):
    h, model = trained.hierarchy, trained.model
    genotypes = [("g4",), ("g1", "g2"), ("g3", "g6")]
    x = encode_genotypes(genotypes, h)
    changes = subsystem_changes(model, x, batch_size=2)  # two batches: the wild type is shared
    states = model(x, return_states=True).states
    wild = model(torch.zeros(1, h.num_genes), return_states=True).states
    offsets = model.sizes.term_offsets()
    contained = h.contained_gene_sets()
    for b, genes in enumerate(genotypes):
        for t in range(h.num_terms):
            expected = torch.linalg.vector_norm(states[b, offsets[t]:offsets[t + 1]] - wild[0, offsets[t]:offsets[t + 1]])
            assert changes[b, t].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
            touched = any(h.gene_index[g] in contained[t] for g in genes)
            assert (changes[b, t].item() > 0) == touched, (genes, h.terms[t])
    top = top_subsystems(changes, h, 3)[0]
    assert {s.term for s in top} == {"E", "B", "R"}  # g4 reaches exactly these three
    assert [s.change for s in top] == sorted((s.change for s in top), reverse=True)
    assert {s.name for s in top} == {"epsilon", "beta", "root"}


def test_top_subsystems_order_ties_and_k():
    h = hand_hierarchy()  # term order: D, E, A, B, R
    changes = torch.tensor([[0.5, 2.0, 0.5, 0.0, 1.0]])
    ranked = top_subsystems(changes, h, 4)[0]
    assert [s.term for s in ranked] == ["E", "R", "D", "A"]  # equal 0.5: lower term index first
    assert len(top_subsystems(changes, h, 99)[0]) == 5
    with pytest.raises(ValueError, match=">= 1"):
        top_subsystems(changes, h, 0)


# ---- installation -----------------------------------------------------------------------------------------
def writer(text: str, fail_after_first: bool = False):
    def write(staging: Path) -> None:
        (staging / "a.txt").write_text(text)
        if fail_after_first:
            raise OSError(28, "No space left on device")
        (staging / "b.txt").write_text(text)

    return write


def same(text: str):
    return lambda d: (d / "b.txt").is_file() and (d / "b.txt").read_text() == text


def test_install_links_versions_keeps_previous_and_prunes(tmp_path):
    dest = tmp_path / "checkpoints" / "production"
    first = install(dest, "m-v1", writer("one"), same("one"))
    assert first.changed and first.previous is None and os.readlink(dest) == "production.m-v1"
    assert (dest / "b.txt").read_text() == "one"
    again = install(dest, "m-v1", writer("never written"), same("one"))
    assert not again.changed and (dest / "b.txt").read_text() == "one"
    second = install(dest, "m-v2", writer("two"), same("two"))
    assert second.changed and second.previous.name == "production.m-v1"
    assert os.readlink(dest) == "production.m-v2" and os.readlink(f"{dest}.prev") == "production.m-v1"
    install(dest, "m-v3", writer("three"), same("three"))
    left = sorted(p.name for p in dest.parent.iterdir() if not p.name.startswith("."))
    assert left == ["production", "production.m-v2", "production.m-v3", "production.prev"]
    assert (Path(f"{dest}.prev") / "b.txt").read_text() == "two"


def test_failed_or_crashed_install_leaves_the_previous_checkpoint(tmp_path):
    dest = tmp_path / "production"
    install(dest, "m-v1", writer("one"), same("one"))
    with pytest.raises(OSError, match="No space left"):
        install(dest, "m-v2", writer("two", fail_after_first=True), same("two"))
    assert (dest / "b.txt").read_text() == "one" and not (tmp_path / "production.m-v2").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    # what a killed process leaves: a half-written staging directory and a half-made link
    (tmp_path / ".production.m-v2.tmp-abc123").mkdir()
    (tmp_path / ".production.m-v2.tmp-abc123" / "a.txt").write_text("two")
    os.symlink("production.m-v2", tmp_path / ".production.tmp-link-99")
    assert (dest / "b.txt").read_text() == "one"
    install(dest, "m-v2", writer("two"), same("two"))
    assert (dest / "b.txt").read_text() == "two" and [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_install_refuses_a_real_directory(tmp_path):
    dest = tmp_path / "production"
    dest.mkdir()
    with pytest.raises(InstallError, match="not a link made by promotion"):
        install(dest, "m-v1", writer("one"), same("one"))


# ---- selection and the alias rule -------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    """A real sqlite MLflow store with one search: trials with known statuses, metrics and start times."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("space", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, run_name="space-1", tags={"dcell.kind": "search", "dcell.search": "space-1"})
    client.log_param(parent.info.run_id, "metric", "val/pearson")
    client.log_param(parent.info.run_id, "mode", "max")
    runs = {}
    for i, (name, status, values) in enumerate([("low", "FINISHED", [0.2, 0.5]), ("tie_early", "FINISHED", [0.7]),
                                                ("tie_late", "FINISHED", [0.1, 0.7]), ("killed", "KILLED", [0.9]),
                                                ("failed", "FAILED", []), ("no_metric", "FINISHED", [])]):
        run = client.create_run(exp, run_name=name, start_time=1000 + i, tags={
            "dcell.kind": "trial", "mlflow.parentRunId": parent.info.run_id, "dcell.trial_id": f"t{i}"})
        for step, v in enumerate(values):
            client.log_metric(run.info.run_id, "val/pearson", v, step=step)
            client.log_metric(run.info.run_id, "val/mse", 1 - v + 0.01 * i, step=step)
        client.set_terminated(run.info.run_id, status)
        runs[name] = run.info.run_id
    return SimpleNamespace(client=client, uri=uri, parent=client.get_run(parent.info.run_id), runs=runs, exp=exp)


def test_best_finished_run_ties_and_counts(store):
    from dcell_core.serving.selection import best_run, describe_counts

    w = best_run(store.client, store.parent, "val/pearson", "max")
    assert w.run_id == store.runs["tie_early"] and w.value == 0.7  # KILLED 0.9 skipped; equal 0.7: earlier run
    assert w.counts == {"trials": 6, "scored": 3, "running": 0, "finished": 4, "stopped early": 0, "failed": 1,
                        "interrupted": 1}
    assert describe_counts(w.counts) == "6 trials: 3 scored, 1 finished without the metric, 1 failed, 1 interrupted"
    low = best_run(store.client, store.parent, "val/mse", "min")
    assert low.run_id == store.runs["tie_early"] and low.value == pytest.approx(0.31)


def test_search_names_metric_and_mode(store):
    from dcell_core.serving.selection import PromotionError, best_run, metric_and_mode, resolve_search

    pid = store.parent.info.run_id
    for name in (pid, "space-1", "space"):
        assert resolve_search(store.client, name).info.run_id == pid
    with pytest.raises(PromotionError, match="no search 'nope'.*recent searches: space-1"):
        resolve_search(store.client, "nope")
    with pytest.raises(PromotionError, match="is not the parent run of a search"):
        resolve_search(store.client, store.runs["low"])
    assert metric_and_mode(store.parent, None, None) == ("val/pearson", "max")
    with pytest.raises(PromotionError, match="pass --mode"):
        metric_and_mode(store.parent, "val/mse", None)
    with pytest.raises(PromotionError, match="logged metric 'val/nope'"):
        best_run(store.client, store.parent, "val/nope", "max")


def test_open_store_never_creates_an_empty_one(tmp_path):
    from dcell_core.serving.selection import PromotionError, open_store

    with pytest.raises(PromotionError, match="no MLflow store at"):
        open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists()


def version(run: str, value: float, metric="val/pearson", mode="max", fp="fp1"):
    from dcell_core.serving import registry as r

    return {r.TAG_RUN: run, r.TAG_VALUE: repr(value), r.TAG_METRIC: metric, r.TAG_MODE: mode, r.TAG_FINGERPRINT: fp}


def test_alias_moves_only_to_a_better_comparable_run():
    from dcell_core.serving.registry import PromotionRefused, check_replaces

    held = SimpleNamespace(version="3", tags=version("a", 0.5))
    check_replaces(None, "dcell", "production", version("b", 0.1), force=False)
    check_replaces(held, "dcell", "production", version("b", 0.6), force=False)
    check_replaces(held, "dcell", "production", version("a", 0.5), force=False)  # the same run again
    with pytest.raises(PromotionRefused, match="version 3.*0.5.*not better"):
        check_replaces(held, "dcell", "production", version("b", 0.5), force=False)
    with pytest.raises(PromotionRefused, match="hierarchy fingerprint fp2.*not comparable"):
        check_replaces(held, "dcell", "production", version("b", 0.9, fp="fp2"), force=False)
    check_replaces(held, "dcell", "production", version("b", 0.1, fp="fp2"), force=True)
    low = SimpleNamespace(version="1", tags=version("a", 0.5, metric="val/mse", mode="min"))
    check_replaces(low, "dcell", "production", version("b", 0.4, metric="val/mse", mode="min"), force=False)


# ---- command lines and the package ------------------------------------------------------------------------
def run_cli(module: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return run_python("-m", module, *args, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=cwd, timeout=120)


def test_cli_misuse_exits_2(tmp_path, trained):
    r = run_cli("platform.promote", "some-search", "--project-dir", str(tmp_path))
    assert r.returncode == 2 and f"no MLflow store at {tmp_path / 'mlflow.db'}" in r.stderr
    path = write(trained, tmp_path / "ck")
    r = run_cli("platform.predict", "--checkpoint", str(path), "--input", str(tmp_path / "x.csv"))
    assert r.returncode == 2 and "--input needs --output" in r.stderr
    (tmp_path / "in.csv").write_text("genes,id\ng1+g4,1\ng2+YFG9,2\n")
    r = run_cli("platform.predict", "--checkpoint", str(path), "--input", str(tmp_path / "in.csv"), "--output",
                str(tmp_path / "out.csv"))
    assert r.returncode == 2 and "1 gene(s) not in the model's hierarchy: YFG9 (line 3)" in r.stderr
    assert not (tmp_path / "out.csv").exists()


@pytest.fixture(scope="module")
def predict_cli():
    """platform/predict.py as a module of this process (its main is what `python -m platform.predict` runs)."""
    spec = importlib.util.spec_from_file_location("predict_cli_under_test", REPO / "platform" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predict_input_errors_are_usage_errors_naming_the_value(tmp_path, trained, predict_cli, store, capsys):
    path = write(trained, tmp_path / "ck")
    good = tmp_path / "in.csv"
    good.write_text("genes\ng1+g4\n")
    (tmp_path / "empty.csv").write_text("")
    out = str(tmp_path / "out.csv")
    cases = [
        (["--genes", "g1,,g2"], "--genes 'g1,,g2': empty gene name"),
        (["--genes", "g4,g1,g4"], "--genes 'g4,g1,g4': a gene is listed twice"),
        (["--input", str(tmp_path / "none.csv"), "--output", out], f"--input {tmp_path / 'none.csv'}: no such file"),
        (["--input", str(tmp_path / "empty.csv"), "--output", out], f"--input {tmp_path / 'empty.csv'}: empty file"),
        (["--input", str(good), "--output", str(tmp_path / "out.json")], "out.json: use a .csv or .tsv file name"),
        (["--input", str(good), "--output", str(tmp_path / "no" / "out.csv")],
         f"directory {tmp_path / 'no'} does not exist"),
    ]
    for args, message in cases:
        assert predict_cli.main(["--checkpoint", str(path), *args]) == 2, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "out.csv").exists()
    for model, message in [("models:dcell", "model URI 'models:dcell': expected models:/NAME@ALIAS"),
                           ("models:/nope@production", "model URI models:/nope@production: ")]:
        assert predict_cli.main(["--model", model, "--genes", "g1", "--project-dir", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err, model
    assert predict_cli.main(["--checkpoint", str(path), "--input", str(good), "--output", out]) == 0
    assert "wrote 1 prediction(s)" in capsys.readouterr().out


def test_a_valueerror_from_the_model_is_not_a_usage_error(tmp_path, trained, predict_cli, monkeypatch, capsys):
    """A fault in the code between the input and the model (the encoder gives the batch one gene column too many):
    the model's own shape check raises ValueError, and the CLI lets it through as a traceback (exit 1)."""
    from dcell_core.serving import inference

    path = write(trained, tmp_path / "ck")
    assert predict_cli.main(["--checkpoint", str(path), "--genes", "g1,g4"]) == 0
    capsys.readouterr()
    encode = inference.encode_genotypes
    monkeypatch.setattr(inference, "encode_genotypes",
                        lambda genotypes, hierarchy: torch.nn.functional.pad(encode(genotypes, hierarchy), (0, 1)))
    with pytest.raises(ValueError, match=r"expected a dense genotype batch \[B, 6\], got shape \(1, 7\)") as err:
        predict_cli.main(["--checkpoint", str(path), "--genes", "g1,g4"])
    assert not isinstance(err.value, inference.PredictInputError)
    assert "error:" not in capsys.readouterr().err


def test_import_dcell_core_stays_cheap():
    code = ("import sys, dcell_core; assert 'torch' not in sys.modules and 'mlflow' not in sys.modules; "
            "f = dcell_core.load_checkpoint; assert f.__module__ == 'dcell_core.serving.checkpoint'")
    r = run_python("-c", code, timeout=120)
    assert r.returncode == 0, r.stderr
