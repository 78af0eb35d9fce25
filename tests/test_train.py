"""Training on the real DNA-repair sub-hierarchy with simulated genotypes: metrics, schedule, checkpoints, resume."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dcell_core.config import compose
from dcell_core.nn import native
from dcell_core.train.checkpoint import load_checkpoint_files
from dcell_core.train.loop import NonFiniteLossError, train
from helpers import run_python

SMALL = ["data=yeast_dna_repair", "data.genotypes.num_doubles=3000", "data.genotypes.num_triples=1000",
         "train.plots=false", "train.batch_size=128"]


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DCELL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


class Crash(RuntimeError):
    pass


def test_resume_continues_exactly(cache_env):
    """A run killed after epoch 2 and resumed from its checkpoint ends exactly where an uninterrupted run ends."""
    cfg = [*SMALL, "train.epochs=3"]
    straight = train(compose(cfg), output_dir=cache_env / "straight")

    def crash_after_epoch_2(metrics, checkpoint):
        if metrics["epoch"] == 2:
            raise Crash("killed")

    with pytest.raises(Crash):
        train(compose(cfg), crash_after_epoch_2, output_dir=cache_env / "split")
    assert sorted(p.name for p in (cache_env / "split" / "checkpoints").iterdir()) == ["epoch_0001", "epoch_0002"]
    resumed = train(compose([*cfg, f"train.resume_from={cache_env / 'split'}"]), output_dir=cache_env / "split")
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    wall_clock = ("samples_per_s", "epoch_s")
    for got, want in zip(resumed.history, straight.history):
        assert {k: v for k, v in got.items() if k not in wall_clock} == \
            {k: v for k, v in want.items() if k not in wall_clock}
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    lines = (cache_env / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    # optimizer state for other parameter tensors than the model's (an older parameter layout) is refused by name
    state_file = cache_env / "split" / "checkpoints" / "epoch_0003" / "train_state.pt"
    state = torch.load(state_file, weights_only=True)
    dropped = state["optimizer"]["param_groups"][0]["params"].pop()
    state["optimizer"]["state"].pop(dropped, None)
    torch.save(state, state_file)
    n = len(state["optimizer"]["param_groups"][0]["params"])
    with pytest.raises(ValueError, match=rf"epoch_0003 holds optimizer state for {n} parameter tensors, the model "
                                         rf"has {n + 1} .*cannot resume"):
        train(compose([*cfg, f"train.resume_from={cache_env / 'split'}"]), output_dir=cache_env / "split")


def test_lr_schedule_really_steps(cache_env):
    result = train(compose([*SMALL, "train.epochs=3", "train.lr=0.002", "train.lr_schedule=cosine"]),
                   output_dir=cache_env / "run")
    n_train = len(result.data.dataset.splits["train"])
    steps = math.ceil(n_train / 128)
    for h in result.history:  # lr after epoch e: cosine over all 3 x steps optimizer steps
        expected = 0.002 * 0.5 * (1 + math.cos(math.pi * h["epoch"] * steps / (3 * steps)))
        assert h["lr"] == pytest.approx(expected, abs=1e-12)
    constant = train(compose([*SMALL, "train.epochs=2", "train.lr_schedule=constant", "train.lr=0.002"]),
                     output_dir=cache_env / "const")
    assert [h["lr"] for h in constant.history] == [0.002, 0.002]


def test_metrics_and_checkpoint_contents(cache_env):
    result = train(compose([*SMALL, "train.epochs=1", "loss.weight_decay=1e-4"]), output_dir=cache_env / "run")
    h = result.history[0]
    for key in ("train/loss", "train/root_mse", "train/aux", "train/aux_weighted", "train/l2", "train/pearson",
                "val/mse", "val/pearson", "val/spearman", "val/pred_std", "val/collapse", "init_diversity", "lr",
                "samples_per_s"):
        assert key in h and math.isfinite(h[key]), key
    assert h["train/l2"] > 0 and h["train/aux_weighted"] == pytest.approx(0.3 * h["train/aux"], rel=1e-5)
    assert h["train/loss"] == pytest.approx(h["train/root_mse"] + h["train/aux_weighted"] + h["train/l2"], rel=1e-5)
    weights, state, cfg, meta = load_checkpoint_files(result.checkpoint)
    assert set(weights) == set(result.model.state_dict())
    assert cfg.loss.weight_decay == 1e-4 and meta["epoch"] == 1
    assert meta["fingerprint"] == result.data.hierarchy.fingerprint
    assert meta["genes"] == list(result.data.hierarchy.genes)


def test_checkpoint_never_unpickles_code(cache_env):
    result = train(compose([*SMALL, "train.epochs=1"]), output_dir=cache_env / "run")
    torch.save({"payload": Path("/etc/passwd")}, result.checkpoint / "train_state.pt")  # an arbitrary object
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_checkpoint_files(result.checkpoint)


def test_nonfinite_loss_stops_at_once(cache_env):
    with pytest.raises(NonFiniteLossError, match="at epoch 1, step 1"):
        train(compose([*SMALL, "train.epochs=2", "loss.alpha=inf"]), output_dir=cache_env / "run")


def test_beats_additive_baseline(cache_env):
    """DCell trained a few epochs on the simulated data beats a ridge model of per-gene additive effects."""
    result = train(compose(["data=yeast_dna_repair", "train.plots=false", "train.epochs=4", "train.lr=0.01"]),
                   output_dir=cache_env / "run")
    data = result.data.dataset
    from dcell_core.genotypes import GenotypeBatcher

    batcher = GenotypeBatcher.from_dataset(data)
    xt, yt = (a.double().numpy() for a in batcher.batch(data.splits["train"]))
    xv, yv = (a.double().numpy() for a in batcher.batch(data.splits["val"]))
    design = np.c_[xt, np.ones(len(xt))]
    coef = np.linalg.solve(design.T @ design + 1.0 * np.eye(design.shape[1]), design.T @ yt)
    additive = float(np.corrcoef(np.c_[xv, np.ones(len(xv))] @ coef, yv)[0, 1])
    dcell = result.history[-1]["val/pearson"]
    assert dcell > additive + 0.02, (dcell, additive)


def test_head_biases_can_start_at_the_training_target_mean(cache_env):
    from dcell_core.nn import ModelConfig, build_dcell
    from dcell_core.train.loop import Training

    run = Training(compose([*SMALL, "model.init_range=0.001", "train.head_bias_init=target_mean"]), cache_env / "a")
    ds = run.data.dataset
    mean = float(np.mean(ds.phenotypes.reshape(len(ds), -1)[ds.splits["train"], 0], dtype=np.float64))
    biases = torch.cat([b.detach().flatten() for b in run.model.head_biases()])
    assert len(biases) == run.data.hierarchy.num_terms
    assert mean > 0.1 and torch.allclose(biases, torch.full_like(biases, mean))
    # with weights of +-0.001 the first predictions sit at the mean instead of near 0
    assert abs(run.init_diversity) < 0.05
    x, _ = run.batcher.batch(ds.splits["train"][:64])
    with torch.no_grad():
        assert abs(float(run.model(x).prediction.mean()) - mean) < 0.05
    default = Training(compose([*SMALL, "model.init_range=0.001"]), cache_env / "b")
    assert max(float(b.detach().abs().max()) for b in default.model.head_biases()) <= 0.001
    assert len(build_dcell(run.data.hierarchy, ModelConfig(), fast=False).head_biases()) == len(biases)
    with pytest.raises(ValueError, match="train.head_bias_init must be one of .*'median'"):
        Training(compose([*SMALL, "train.head_bias_init=median"]), cache_env / "c")


def test_precise_batch_norm_is_the_mean_over_every_training_batch(cache_env):
    """After an epoch with batch_norm_stats=precise, the stratum model's running statistics equal torch's own
    cumulative average (BatchNorm1d momentum=None) in the per-term oracle over the same training batches; the
    weights are those of the same run with the default EMA statistics."""
    from dcell_core.nn.convert import oracle_state_dict, to_oracle
    from dcell_core.train.loop import Training

    runs = {}
    for stats in ("ema", "precise"):
        runs[stats] = Training(compose([*SMALL, "train.epochs=1", f"train.batch_norm_stats={stats}"]),
                               cache_env / stats)
        runs[stats].history = [m for m, _ in runs[stats].epochs()]
    run = runs["precise"]
    oracle = to_oracle(run.model)
    for module in oracle.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.momentum = None  # cumulative moving average: every batch weighs the same
            module.reset_running_stats()
    oracle.train()
    with torch.no_grad():
        batches = [oracle(x) for x, _ in run.batcher.iterate(run.train_rows, 128, seed=0, epoch=1, drop_last=True)]
    got, ema, want = oracle_state_dict(run.model), oracle_state_dict(runs["ema"].model), oracle.state_dict()
    stats = [k for k in want if ".running_" in k]
    assert len(batches) >= 10 and len(stats) == 2 * run.data.hierarchy.num_terms
    for k in stats:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    ema_params = dict(runs["ema"].model.named_parameters())
    for k, p in run.model.named_parameters():
        assert torch.equal(p, ema_params[k]), k
    assert max(float((got[k] - ema[k]).abs().max()) for k in stats) > 1e-3
    assert runs["precise"].history[0]["val/pearson"] != runs["ema"].history[0]["val/pearson"]
    with pytest.raises(ValueError, match="train.batch_norm_stats must be one of"):
        Training(compose([*SMALL, "train.batch_norm_stats=median"]), cache_env / "bad")


def test_train_cli(tmp_path):
    # a home of its own; the model's C++ ops from the cache scripts/setup.sh built (not rebuilt for this home)
    env = {"DCELL_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "DCELL_EXTENSIONS_DIR": str(native.build_dir())}
    args = ["-m", "dcell_core.train", *SMALL[:3], "train.epochs=2", "--output-dir", str(tmp_path / "r")]
    r = run_python(*args, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("epoch ") == 2 and (tmp_path / "r" / "plots" / "val_predictions.png").read_bytes()[:4] \
        == b"\x89PNG"
    assert (tmp_path / "r" / "checkpoints" / "epoch_0002" / "model.safetensors").exists()
    r = run_python(*args[:-2], "train.device=cuda" if not torch.cuda.is_available() else "train.epochs=0", env=env)
    assert r.returncode == 2 and "error:" in r.stderr


@pytest.mark.parametrize("given, expected", [(None, "1"), ("0", "0")])
def test_importing_the_platform_turns_on_huge_pages_for_torch_unless_the_environment_says_otherwise(given, expected):
    """PyTorch reads THP_MEM_ALLOC_ENABLE at its first allocation, so dcell_core sets it on import (before torch)."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if given is not None:
        env["THP_MEM_ALLOC_ENABLE"] = given
    r = run_python("-c", "import os, dcell_core; print(os.environ['THP_MEM_ALLOC_ENABLE'])", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected
