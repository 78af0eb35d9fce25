"""Replicates: a trial trains its configuration with k seeds in lockstep and is judged by the mean.

Default tier: the interval, the seeds, the per-epoch combination, the record and the summary table on a real sqlite
store. Slow tier: a 2-configuration x 2-replicate search with real Ray and a real sqlite MLflow store, then
`python -m platform.promote` on it.
"""
from __future__ import annotations

import csv
import json
import math
import re
import statistics

import pytest
import yaml
from mlflow.tracking import MlflowClient

import helpers
from dcell_core.search import ledger
from dcell_core.search.summary import interval_columns, score_column, trials_table
from dcell_core.search.trial import TrialContext, replicate_metrics, replicate_overrides, replicate_seed, trial_seed

T_975 = {1: 12.706204736174707, 2: 4.302652729749464, 4: 2.7764451051977934}  # Student t quantiles, df 1, 2, 4


def interval_by_hand(values: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(values)
    half = T_975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


@pytest.mark.parametrize("values", [[0.5, 0.7], [0.81, 0.8, 0.86], [1.0, 2.0, 4.0, 8.0, 3.5]])
def test_interval_is_the_student_t_interval_of_the_mean(values):
    got = ledger.mean_interval(values)
    assert got == pytest.approx(interval_by_hand(values), rel=1e-12)
    assert got[1] < got[0] < got[2]


def test_interval_of_one_value_equal_values_and_nan():
    mean, low, high = ledger.mean_interval([0.4])
    assert mean == 0.4 and math.isnan(low) and math.isnan(high)
    assert ledger.mean_interval([0.3, 0.3, 0.3]) == (0.3, 0.3, 0.3)
    assert all(math.isnan(v) for v in ledger.mean_interval([0.3, float("nan")]))
    with pytest.raises(ValueError, match="non-empty"):
        ledger.mean_interval([])


def ctx(**kw) -> TrialContext:
    return TrialContext(tracking_uri="", experiment_id="", parent_run_id="", overrides=(), search_seed=7,
                        metric="val/pearson", mode="max", **kw)


def test_replicate_seeds():
    sampled = {"train.lr": 0.01, "model.norm_type": "layer"}
    seeds = [replicate_seed(7, sampled, r) for r in range(4)]
    assert seeds[0] == trial_seed(7, sampled)  # replicate 0 is the trial a search without replicates makes
    assert len(set(seeds)) == 4 and seeds == [replicate_seed(7, dict(sampled), r) for r in range(4)]
    assert replicate_seed(8, sampled, 1) != seeds[1]
    assert replicate_seed(7, {**sampled, "train.lr": 0.02}, 1) != seeds[1]
    assert replicate_seed(7, {"train.seed": 3}, 0) == 3 and replicate_seed(7, {"train.seed": 3}, 1) != 3


def test_replicate_overrides():
    sampled = {"train.lr": 0.01}
    seeds = [replicate_seed(7, sampled, r) for r in range(2)]
    assert replicate_overrides(ctx(), sampled, 0) == [f"train.seed={seeds[0]}"]
    assert replicate_overrides(ctx(replicates=2), sampled, 1) == [f"train.seed={seeds[1]}"]
    split = ctx(replicates=2, replicate_split=True)
    assert replicate_overrides(split, sampled, 0) == [f"train.seed={seeds[0]}"]  # replicate 0 keeps the split
    assert replicate_overrides(split, sampled, 1) == [f"train.seed={seeds[1]}", f"data.genotypes.split_seed={seeds[1]}"]
    assert replicate_overrides(ctx(), {"train.seed": 3}, 0) == []  # the sampled override sets it


def test_one_replicate_reports_its_own_metrics_unchanged():
    metrics = {"epoch": 1, "val/pearson": 0.5, "val/mse": 0.1}
    reported, logged = replicate_metrics([metrics], "val/pearson")
    assert reported is metrics and logged is metrics


def test_replicates_report_the_mean_and_log_each_value_and_the_interval():
    per = [{"epoch": 3, "val/pearson": 0.5, "val/mse": 0.2}, {"epoch": 3, "val/pearson": 0.7, "val/mse": 0.4}]
    reported, logged = replicate_metrics(per, "val/pearson")
    assert reported == {"epoch": 3, "val/pearson": pytest.approx(0.6), "val/mse": pytest.approx(0.3)}
    _, low, high = interval_by_hand([0.5, 0.7])
    assert logged == {**reported, "val/pearson/rep0": 0.5, "val/pearson/rep1": 0.7, "val/mse/rep0": 0.2,
                      "val/mse/rep1": 0.4, "val/pearson/ci_low": pytest.approx(low),
                      "val/pearson/ci_high": pytest.approx(high)}
    with pytest.raises(RuntimeError, match="out of step"):
        replicate_metrics([per[0], {**per[1], "epoch": 2}], "val/pearson")


def replicated_trial(client, exp, parent, tid: str, per_epoch: list[list[float]], finished: bool = True) -> str:
    """A trial of len(per_epoch[0]) replicates logged the way dcell_trial logs it."""
    k = len(per_epoch[0])
    tags = {} if k == 1 else {ledger.TAG_REPLICATES: str(k)}
    run_id = ledger.start_trial(client, exp, parent, tid, tid, {"train.lr": tid}, tags)
    ledger.set_budget(client, run_id, len(per_epoch))
    for epoch, values in enumerate(per_epoch, start=1):
        _, logged = replicate_metrics([{"epoch": epoch, "val/pearson": v} for v in values], "val/pearson")
        for key, value in logged.items():
            client.log_metric(run_id, key, value, step=epoch)
    if finished:
        ledger.trial_finished(client, run_id)
    return run_id


def test_records_rank_by_the_mean_and_the_table_shows_the_interval(ledger_store):
    client, exp, parent = ledger_store
    replicated_trial(client, exp, parent, "steady", [[0.2, 0.3], [0.80, 0.82]])
    replicated_trial(client, exp, parent, "lucky", [[0.9, 0.1], [0.99, 0.60]])  # best single seed, lower mean
    replicated_trial(client, exp, parent, "early", [[0.95, 0.95]], finished=False)
    records = ledger.trial_records(client, exp, parent, "val/pearson")
    by_id = {r.trial_id: r for r in records}
    steady = by_id["steady"]
    assert (steady.replicates, steady.replicate_scores) == (2, (0.80, 0.82))
    assert steady.score == pytest.approx(0.81)
    assert (steady.ci_low, steady.ci_high) == pytest.approx(interval_by_hand([0.80, 0.82])[1:])
    assert ledger.winner(records, "max").trial_id == "steady"
    table = trials_table(records, ["train.lr"], "val/pearson", "max")
    low, high = interval_columns("val/pearson")
    assert list(table["trial_id"]) == ["steady", "lucky", "early"]
    assert list(table["replicates"]) == [2, 2, 2]
    assert list(table["val/pearson per replicate"])[:2] == ["0.8;0.82", "0.99;0.6"]
    assert table[low][0] == steady.ci_low and table[high][0] == steady.ci_high
    assert table[score_column("val/pearson")][1] == pytest.approx(0.795)


def test_a_search_without_replicates_keeps_its_table(ledger_store):
    client, exp, parent = ledger_store
    replicated_trial(client, exp, parent, "a", [[0.5], [0.6]])
    records = ledger.trial_records(client, exp, parent, "val/pearson")
    assert (records[0].replicates, records[0].replicate_scores) == (1, (0.6,))
    assert math.isnan(records[0].ci_low) and math.isnan(records[0].ci_high)
    table = trials_table(records, ["train.lr"], "val/pearson", "max")
    assert list(table.columns) == ["trial_id", "run_id", "status", "outcome", "epochs", score_column("val/pearson"),
                                   "competes", "train.lr", "error"]


# ---- slow: a real search ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_search_with_two_replicates_per_configuration(tmp_path):
    from omegaconf import OmegaConf

    from dcell_core.config import DCellConfig
    from dcell_core.data import load_run_data
    from dcell_core.search.baselines import SPLITS_METRICS
    from dcell_core.train.baselines import KINDS, fit_baselines
    from dcell_core.train.loop import train

    project, env = tmp_path / "project", helpers.env_for(tmp_path / "cache")
    path = helpers.search_file(tmp_path, "reps", 2, {"train.lr": {"grid": [0.01, 0.002]}})
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "replicates": 2}, sort_keys=False))
    r = helpers.run_python("-m", "platform.search", str(path), "--project-dir", str(project), env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    parents, children = helpers.runs_of(uri, "reps")
    assert len(parents) == 1 and len(children) == 2
    metric, (low_name, high_name) = "val/pearson", ledger.interval_metrics("val/pearson")
    means = {}
    for run in children:
        run_id, tags = run.info.run_id, run.data.tags
        assert run.info.status == "FINISHED"
        assert tags[ledger.TAG_REPLICATES] == "2" and tags[ledger.TAG_CHECKPOINT_REPLICATE] == "0"
        sampled = {"train.lr": float(run.data.params["train.lr"])}
        assert tags[ledger.TAG_REPLICATE_SEEDS] == ",".join(str(replicate_seed(0, sampled, i)) for i in range(2))
        history = {key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
                   for key in (metric, "val/mse", low_name, high_name,
                               *(ledger.replicate_metric(name, i) for name in (metric, "val/mse") for i in range(2)))}
        assert helpers.steps(uri, run_id) == [1, 2] and all(len(v) == 2 for v in history.values())
        for epoch in range(2):
            for name in (metric, "val/mse"):
                seeds = [history[ledger.replicate_metric(name, i)][epoch] for i in range(2)]
                assert seeds[0] != seeds[1]  # two seeds, two models
                assert history[name][epoch] == pytest.approx(statistics.fmean(seeds), rel=1e-12)
            seeds = [history[ledger.replicate_metric(metric, i)][epoch] for i in range(2)]
            assert (history[low_name][epoch], history[high_name][epoch]) == pytest.approx(
                interval_by_hand(seeds)[1:], rel=1e-9)
        means[run_id] = history[metric][-1]
        # Tune (and so ASHA) was given the mean, epoch by epoch
        result = project / "ray_results" / parents[0].data.tags[ledger.TAG_SEARCH] / f"trial_{tags[ledger.TAG_TRIAL]}"
        tuned = [json.loads(line)[metric] for line in (result / "result.json").read_text().splitlines()]
        assert tuned == pytest.approx(history[metric], rel=1e-12)
        # checkpoint/ is replicate 0's last epoch, and replicate 0 trained as it would have alone
        meta = json.loads(open(client.download_artifacts(run_id, "checkpoint/meta.json", str(tmp_path))).read())
        assert meta["epoch"] == 2 and meta["history"][-1][metric] == history[ledger.replicate_metric(metric, 0)][-1]
        config = OmegaConf.merge(OmegaConf.structured(DCellConfig), OmegaConf.load(
            client.download_artifacts(run_id, "resolved_config.yaml", str(tmp_path))))
        alone = train(config, output_dir=tmp_path / f"alone-{run_id}")
        assert [h[metric] for h in alone.history] == history[ledger.replicate_metric(metric, 0)]

    best = max(means, key=means.get)
    rows = list(csv.DictReader(open(client.download_artifacts(parents[0].info.run_id, "summary.csv", str(tmp_path)))))
    assert [row["run_id"] for row in rows] == sorted(means, key=means.get, reverse=True)
    for row in rows:
        seeds = [float(v) for v in row[f"{metric} per replicate"].split(";")]
        assert row["replicates"] == "2" and float(row[score_column(metric)]) == pytest.approx(means[row["run_id"]])
        assert (float(row[interval_columns(metric)[0]]), float(row[interval_columns(metric)[1]])) == pytest.approx(
            interval_by_hand(seeds)[1:], rel=1e-5)
    assert "95% interval" in r.stdout and f"(run {best}," in r.stdout
    named = re.search(r"^winner: trial \S+ \(run ([0-9a-f]{32})", r.stdout, re.M).group(1)
    assert named == best

    # the per-gene baselines, fitted on the data the trials trained on (the search's fixed config: a trial's resolved
    # config with its own train.* values), are in the parent run and on the line after the winner's
    fitted = fit_baselines(load_run_data(config).dataset)
    logged = client.get_run(parents[0].info.run_id).data.metrics
    for kind in KINDS:
        for name in SPLITS_METRICS:
            assert logged[ledger.baseline_metric(kind, name)] == pytest.approx(fitted[kind][name], rel=1e-9)
    line = ", ".join(f"{k} {fitted[k][metric]:.4f} (test {fitted[k]['test/pearson']:.4f})" for k in KINDS)
    assert re.search(rf"^winner: .*\nper-gene baselines \(ridge on the train split\), {metric}: {re.escape(line)}$",
                     r.stdout, re.M), r.stdout[-3000:]

    p = helpers.run_python("-m", "platform.promote", "reps", "--project-dir", str(project), env=env, cwd=project)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"winner: run {best} " in p.stdout
    info = json.loads((project / "checkpoints" / "production" / "checkpoint.json").read_text())
    assert info["source"]["run_id"] == best and info["metric"]["value"] == pytest.approx(means[best])


@pytest.mark.slow
def test_a_killed_search_resumes_every_replicate_from_its_own_state(tmp_path):
    """The driver is SIGKILLed once the trial logged epoch 2 of 4; --resume continues both replicates from the
    trial's checkpoint (one state per replicate), and each replicate's values are those it trains alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from omegaconf import OmegaConf

    from dcell_core.config import DCellConfig
    from dcell_core.train.loop import train

    project, env = tmp_path / "project", helpers.env_for(tmp_path / "cache")
    path = helpers.search_file(tmp_path, "repkill", 4, {"train.lr": {"grid": [0.01]}})
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "replicates": 2}, sort_keys=False))
    cmd = [sys.executable, "-m", "platform.search", str(path), "--project-dir", str(project)]
    uri = f"sqlite:///{project / 'mlflow.db'}"
    proc = subprocess.Popen(cmd, cwd=helpers.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (list((project / "ray_results").glob("*/dcell_search.json")) and (
            children := helpers.runs_of(uri, "repkill")[1]) and len(helpers.steps(uri, children[0].info.run_id)) >= 2):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "the trial did not reach epoch 2 in 300 s"
        time.sleep(1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=180)
    os.killpg(proc.pid, signal.SIGKILL)  # the local Ray processes lost their driver
    r = helpers.run_python(*cmd[1:], "--resume", env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    client = MlflowClient(tracking_uri=uri)
    (run,) = helpers.runs_of(uri, "repkill")[1]
    assert run.info.status == "FINISHED" and helpers.steps(uri, run.info.run_id) == [1, 2, 3, 4]
    assert int(run.data.tags[ledger.TAG_RESUMED]) >= 1
    config = OmegaConf.merge(OmegaConf.structured(DCellConfig), OmegaConf.load(
        client.download_artifacts(run.info.run_id, "resolved_config.yaml", str(tmp_path))))
    seeds = [int(s) for s in run.data.tags[ledger.TAG_REPLICATE_SEEDS].split(",")]
    assert config.train.seed == seeds[0] and config.train.resume_from  # the config of the resumed attempt
    config.train.resume_from = None
    for i, seed in enumerate(seeds):
        config.train.seed = seed
        alone = train(config, output_dir=tmp_path / f"alone{i}")
        logged = sorted(client.get_metric_history(run.info.run_id, ledger.replicate_metric("val/pearson", i)),
                        key=lambda m: m.step)
        assert [m.value for m in logged] == [h["val/pearson"] for h in alone.history]
