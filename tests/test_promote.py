"""Promotion and prediction after real searches: local Ray, the sqlite MLflow store, the CLIs as a user runs them.

One module-scoped project holds two searches on the DNA-repair sub-hierarchy with few simulated genotypes:
`promo` (2 trials, learning rates 0.01 and 0.003, 2 epochs) and `weak` (1 trial at learning rate 1e-6, 1 epoch,
barely trained). Each test that changes the registry or a checkpoint destination uses its own model name and
destination, except the `dcell` / checkpoints/production pair made by the `promoted` fixture.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from dcell_core.fileio import file_sha256
from helpers import SMALL_DATA, env_for, run_python, search_file

pytestmark = pytest.mark.slow


def cli(project, module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_python("-m", module, *args, env=project.env, timeout=timeout)


def search_parent(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`dcell.kind` = 'search'")
    return parent


def finished_trials(client: MlflowClient, parent) -> list:
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return [r for r in runs if r.info.status == "FINISHED"]


def expected_winner(client: MlflowClient, parent):
    """The FINISHED trial with the highest final val/pearson, computed here from the MLflow records."""
    return max(finished_trials(client, parent), key=lambda r: (r.data.metrics["val/pearson"], -r.info.start_time))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    base = tmp_path_factory.mktemp("promotion")
    env = env_for(base / "cache", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    proj = SimpleNamespace(base=base, dir=base / "project", env=env, uri=f"sqlite:///{base / 'project' / 'mlflow.db'}")
    for name, epochs, lrs, slots in (("promo", 2, [0.01, 0.003], 2), ("weak", 1, [1.0e-6], 1)):
        f = search_file(base, name, epochs, {"train.lr": {"grid": lrs}}, description=f"promotion test search {name}",
                        max_concurrent=slots)
        r = cli(proj, "platform.search", str(f), "--project-dir", str(proj.dir), timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    client = MlflowClient(tracking_uri=proj.uri)
    proj.client = client
    proj.promo, proj.weak = search_parent(client, "promo"), search_parent(client, "weak")
    assert len(finished_trials(client, proj.promo)) == 2 and len(finished_trials(client, proj.weak)) == 1
    saved = {k: os.environ.get(k) for k in ("DCELL_CACHE_DIR", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")}
    os.environ.update({k: env[k] for k in saved})  # for the promotions run in this process
    yield proj
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def promoted(project):
    """`python -m platform.promote promo`: model dcell, alias production, <project>/checkpoints/production."""
    r = cli(project, "platform.promote", "promo", "--project-dir", str(project.dir))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    dest = project.dir / "checkpoints" / "production"
    return SimpleNamespace(stdout=r.stdout, dest=dest, files=snapshot(dest))


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): file_sha256(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def promote_here(project, search: str, model: str, **kw):
    from dcell_core.serving.promote import PromoteRequest, promote

    return promote(PromoteRequest(search=search, model_name=model, project_dir=project.dir,
                                  dest=project.base / model / "production", stream=io.StringIO(), **kw))


def test_promotes_the_best_finished_run(project, promoted):
    winner = expected_winner(project.client, project.promo)
    version = project.client.get_model_version_by_alias("dcell", "production")
    assert version.run_id == winner.info.run_id and version.current_stage == "None"
    assert version.tags["dcell.run_id"] == winner.info.run_id
    assert float(version.tags["dcell.metric_value"]) == winner.data.metrics["val/pearson"]
    meta = json.loads(Path(project.client.download_artifacts(winner.info.run_id, "checkpoint/meta.json",
                                                             str(project.base / "meta"))).read_text())
    assert version.tags["dcell.data_fingerprint"] == meta["fingerprint"] == project.promo.data.tags["dcell.data_fingerprint"]
    assert f"winner: run {winner.info.run_id}" in promoted.stdout
    dest = promoted.dest
    assert dest.is_symlink() and os.readlink(dest) == f"production.dcell-v{version.version}"
    info = json.loads((dest / "checkpoint.json").read_text())
    assert info["source"]["run_id"] == winner.info.run_id and info["fingerprint"] == meta["fingerprint"]
    assert info["metric"] == {"name": "val/pearson", "mode": "max", "value": winner.data.metrics["val/pearson"]}
    card = (dest / "model_card.md").read_text()
    assert f"`train.lr` | {winner.data.params['train.lr']} |" in card and winner.info.run_id in card
    assert {"plots/val_predictions.png", "plots/parallel_coordinates.png", "hierarchy.json", "config.yaml",
            "metrics.json", "model.safetensors"} <= set(info["files"])
    assert not list(dest.parent.glob("*.pt")) and not list(dest.glob("**/*.pt"))  # nothing pickled


def test_promotion_is_idempotent(project, promoted):
    before = project.client.search_model_versions("name = 'dcell'")
    r = cli(project, "platform.promote", "promo", "--project-dir", str(project.dir))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(existing); alias production" in r.stdout and "(unchanged)" in r.stdout
    after = project.client.search_model_versions("name = 'dcell'")
    assert len(after) == len(before) == 1 and after[0].version == before[0].version
    assert snapshot(promoted.dest) == promoted.files
    assert not Path(f"{promoted.dest}.prev").exists()


def trial_reference(project, run) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """The trial's own end-of-trial validation predictions, from its last Tune checkpoint via the training code,
    and the validation genotypes by gene name."""
    from omegaconf import OmegaConf

    from dcell_core.config import DCellConfig
    from dcell_core.data import load_run_data
    from dcell_core.genotypes import GenotypeBatcher
    from dcell_core.nn import build_dcell
    from dcell_core.train.checkpoint import load_checkpoint_files
    from dcell_core.train.loop import predict
    from dcell_core.train.metrics import regression_metrics

    search = project.promo.data.tags["dcell.search"]
    trial_dir = project.dir / "ray_results" / search / f"trial_{run.data.tags['dcell.trial_id']}"
    last = sorted(trial_dir.glob("checkpoint_*"))[-1]
    weights, _, cfg, meta = load_checkpoint_files(last)
    typed = OmegaConf.merge(OmegaConf.structured(DCellConfig), cfg)
    data = load_run_data(typed)
    model = build_dcell(data.hierarchy, OmegaConf.to_object(typed.model))
    model.load_state_dict(weights, strict=True)
    rows = data.dataset.splits["val"]
    pred, target = predict(model, GenotypeBatcher.from_dataset(data.dataset), rows, 1024, torch.device("cpu"), False)
    # the trial logged this exact number at its last epoch: these are its own predictions
    assert meta["epoch"] == run.data.metrics["epoch"]
    assert regression_metrics(pred, target)["pearson"] == pytest.approx(run.data.metrics["val/pearson"], abs=1e-6)
    ds, genes = data.dataset, data.hierarchy.genes
    genotypes = [tuple(sorted(genes[g] for g in ds.gene_indices[ds.offsets[i]:ds.offsets[i + 1]])) for i in rows]
    return pred, genotypes


def test_predictions_equal_the_trials_own(project, promoted):
    import dcell_core

    winner = expected_winner(project.client, project.promo)
    reference, genotypes = trial_reference(project, winner)
    table = project.base / "val.csv"
    pd.DataFrame({"row": range(len(genotypes)), "genes": ["+".join(g) for g in genotypes]}).to_csv(table, index=False)
    outputs = {}
    for label, source in (("checkpoint", ["--checkpoint", str(promoted.dest)]),
                          ("registry", ["--model", "models:/dcell@production", "--project-dir", str(project.dir)])):
        out = project.base / f"pred_{label}.csv"
        r = cli(project, "platform.predict", *source, "--input", str(table), "--output", str(out))
        assert r.returncode == 0, r.stderr[-3000:]
        outputs[label] = pd.read_csv(out)
        assert outputs[label]["row"].tolist() == list(range(len(genotypes)))
        np.testing.assert_allclose(outputs[label]["prediction"].to_numpy(), reference, rtol=1e-5, atol=1e-6)
    loaded = dcell_core.load_checkpoint(promoted.dest)
    np.testing.assert_allclose(loaded.predict(genotypes), reference, rtol=1e-5, atol=1e-6)


def test_subsystems_unknown_genes_and_fingerprint_mismatch(project, promoted):
    from dcell_core.serving import load_checkpoint, subsystem_changes, top_subsystems

    ckpt = load_checkpoint(promoted.dest)
    genes = ckpt.hierarchy.genes[:2]
    r = cli(project, "platform.predict", "--checkpoint", str(promoted.dest), "--genes", ",".join(genes),
            "--subsystems", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    expected = top_subsystems(subsystem_changes(ckpt.model, ckpt.encode([genes])), ckpt.hierarchy, 3)[0]
    for rank, s in enumerate(expected, 1):
        assert f"{rank:2d}. {s.term}  {s.name}" in r.stdout
    assert repr(float(ckpt.predict([genes])[0])) in r.stdout
    r = cli(project, "platform.predict", "--checkpoint", str(promoted.dest), "--genes", f"{genes[0]},YXX999W",
            "--genes", "NOTAGENE")
    assert r.returncode == 2 and "2 gene(s) not in the model's hierarchy: YXX999W" in r.stderr and "NOTAGENE" in r.stderr
    r = cli(project, "platform.predict", "--checkpoint", str(promoted.dest), "--genes", f"{genes[0]},YXX999W",
            "--genes", genes[1], "--skip-unknown")
    assert r.returncode == 0 and "skipped (unknown: YXX999W)" in r.stdout
    assert f"{genes[1]}\t{float(ckpt.predict([(genes[1],)])[0])!r}" in r.stdout
    r = cli(project, "platform.predict", "--checkpoint", str(promoted.dest), "--genes", genes[0],
            *SMALL_DATA[:1], "data.ontology.min_genes=7")
    assert r.returncode == 2 and f"trained on hierarchy {ckpt.fingerprint}" in r.stderr
    r = cli(project, "platform.predict", "--checkpoint", str(promoted.dest), "--genes", genes[0], *SMALL_DATA[:1])
    assert r.returncode == 0, r.stderr[-2000:]  # the data it was trained on passes the same check


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_with_a_pickled_payload_is_refused(project, promoted):
    copy = project.base / "hostile"
    shutil.copytree(promoted.dest, copy)
    marker = project.base / "payload_ran"
    torch.save({"state_dict": {}, "hook": Payload(str(marker))}, copy / "model.safetensors")
    info = json.loads((copy / "checkpoint.json").read_text())
    info["files"]["model.safetensors"] = file_sha256(copy / "model.safetensors")  # a self-consistent forgery
    (copy / "checkpoint.json").write_text(json.dumps(info))
    r = cli(project, "platform.predict", "--checkpoint", str(copy), "--genes", "YAL015C")
    assert r.returncode == 2 and "pickle / torch.save archive, not safetensors: refused" in r.stderr
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload(str(marker))))  # the payload is live: unpickling it does run
    assert marker.exists()


def test_alias_moves_to_a_better_run_and_not_to_a_worse(project):
    from dcell_core.serving.registry import PromotionRefused

    weak_best = expected_winner(project.client, project.weak).data.metrics["val/pearson"]
    promo_best = expected_winner(project.client, project.promo).data.metrics["val/pearson"]
    assert promo_best > weak_best, (promo_best, weak_best)  # lr 1e-6 for 1 epoch barely moves the model
    first = promote_here(project, "weak", "moves")
    assert first.version == "1" and first.alias_moved
    better = promote_here(project, "promo", "moves")
    assert better.version == "2" and better.alias_moved and better.winner.value == promo_best
    assert str(project.client.get_model_version_by_alias("moves", "production").version) == "2"
    dest = project.base / "moves" / "production"
    assert os.readlink(dest) == "production.moves-v2" and os.readlink(f"{dest}.prev") == "production.moves-v1"
    with pytest.raises(PromotionRefused, match="not better"):
        promote_here(project, "weak", "moves")
    assert str(project.client.get_model_version_by_alias("moves", "production").version) == "2"
    assert os.readlink(dest) == "production.moves-v2"
    assert len(project.client.search_model_versions("name = 'moves'")) == 2


KILL_AT = r"""
import os, signal, sys
point, dest = sys.argv[1], sys.argv[2]

def hook(event, args):
    if point == "staging" and event == "open" and isinstance(args[1], str) and "w" in args[1]:
        path = os.fspath(args[0]) if isinstance(args[0], (str, os.PathLike)) else ""
        if ".tmp-" in path and os.path.dirname(os.path.dirname(path)) == os.path.dirname(dest) \
                and path.endswith("model.safetensors"):
            os.kill(os.getpid(), signal.SIGKILL)  # the staging copy has begun: half a checkpoint on disk
    if point == "switch" and event == "os.rename" and os.fspath(args[1]) == dest:
        os.kill(os.getpid(), signal.SIGKILL)  # complete new version on disk, link not yet switched

sys.addaudithook(hook)
sys.argv = ["platform.promote", *sys.argv[3:]]
import runpy
runpy.run_module("platform.promote", run_name="__main__")
"""


def test_interrupted_promotion_leaves_the_previous_checkpoint(project):
    from dcell_core.serving import load_checkpoint

    dest = project.base / "crash" / "production"
    first = promote_here(project, "weak", "crash")
    genotypes = [tuple(load_checkpoint(dest).hierarchy.genes[:3])]
    before = load_checkpoint(dest).predict(genotypes)
    args = ["promo", "--model-name", "crash", "--dest", str(dest), "--project-dir", str(project.dir)]
    for point in ("staging", "switch"):
        r = run_python("-c", KILL_AT, point, str(dest), *args, env=project.env)
        assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stdout[-2000:], r.stderr[-2000:])
        assert os.readlink(dest) == "production.crash-v1", point
        ckpt = load_checkpoint(dest)
        assert ckpt.info["source"]["run_id"] == first.winner.run_id
        assert np.array_equal(ckpt.predict(genotypes), before)
        assert str(project.client.get_model_version_by_alias("crash", "production").version) == "1"
    assert list(dest.parent.glob(".*.tmp-*"))  # the kills left staging debris behind
    done = promote_here(project, "promo", "crash")
    assert done.alias_moved and not done.new_version  # the version registered before the kills is reused
    assert os.readlink(dest) == f"production.crash-v{done.version}" and os.readlink(f"{dest}.prev") == "production.crash-v1"
    assert load_checkpoint(dest).info["source"]["run_id"] == expected_winner(project.client, project.promo).info.run_id
    assert not list(dest.parent.glob(".*.tmp-*"))
    assert len(project.client.search_model_versions("name = 'crash'")) == 2
