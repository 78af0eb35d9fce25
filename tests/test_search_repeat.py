"""The same search twice: TPE with the same seed suggests the same distinct configurations in the same order, and
with replicates every configuration gets the same per-seed scores, means and intervals, so the configurations
whose intervals do not overlap are ranked the same way (real Ray, real sqlite MLflow store, the CLI)."""
from __future__ import annotations

import pytest

import helpers
from dcell_core.search import ledger

pytestmark = pytest.mark.slow

PARAMETERS = {"model.norm_type": {"choice": ["batch", "layer"]}, "model.activation": {"choice": ["tanh", "relu"]}}


def _search(project, env, path, name: str) -> list[ledger.TrialRecord]:
    r = helpers.run_python("-m", "platform.search", str(path), "--project-dir", str(project), "--name", name,
                           env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    parents, _ = helpers.runs_of(f"sqlite:///{project / 'mlflow.db'}", "repeat")
    parent = next(p for p in parents if p.data.tags[ledger.TAG_SEARCH] == name)
    records = ledger.trial_records(client, parent.info.experiment_id, parent.info.run_id, "val/pearson")
    return sorted(records, key=lambda rec: rec.run.info.start_time)


def _config(record) -> tuple:
    return tuple(sorted((k, v) for k, v in record.run.data.params.items() if k in PARAMETERS))


def test_same_search_twice_same_configurations_scores_and_ranking(tmp_path):
    project, env = tmp_path / "project", helpers.env_for(tmp_path / "cache")
    path = helpers.search_file(tmp_path, "repeat", 2, PARAMETERS, algorithm="optuna", num_samples=3)
    text = path.read_text().replace("metric: val/pearson", "metric: val/pearson\nreplicates: 2")
    path.write_text(text)
    first, second = _search(project, env, path, "repeat-a"), _search(project, env, path, "repeat-b")

    configs = [_config(r) for r in first]
    assert configs == [_config(r) for r in second]  # the same configurations, suggested in the same order
    assert len(set(configs)) == 3  # and no configuration twice
    for a, b in zip(first, second):
        assert a.replicates == b.replicates == 2
        assert a.replicate_scores == b.replicate_scores  # each seed trains bit for bit the same
        assert (a.score, a.ci_low, a.ci_high) == (b.score, b.ci_low, b.ci_high)

    def separated_order(records):
        """Pairs of configurations whose intervals do not overlap, each as (better, worse)."""
        return {(_config(x), _config(y)) for x in records for y in records
                if x.ci_low > y.ci_high}

    assert separated_order(first) == separated_order(second)
    ranked = [_config(r) for r in ledger.ranked(first, "max")]
    assert ranked == [_config(r) for r in ledger.ranked(second, "max")]
