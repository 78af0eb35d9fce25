"""The MLflow UI lands on a search's runs: its experiment is a model-training experiment, and the link a search
prints opens the runs table (parent run, its children) of a real `mlflow server` in headless chromium, with the
report among the parent's artifacts, opening in the UI's preview."""
from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient

import helpers
from helpers import browser_page, env_for, run_python

from dcell_core.search import tracking


def test_search_experiments_are_model_training_experiments(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    key, kind = tracking.EXPERIMENT_KIND
    new = tracking.experiment_id(client, "fresh", tmp_path / "artifacts")
    assert client.get_experiment(new).tags[key] == kind == "custom_model_development"
    old = client.create_experiment("older")  # made before search experiments had a kind
    assert tracking.experiment_id(client, "older", None) == old
    assert client.get_experiment(old).tags[key] == kind
    chosen = client.create_experiment("chosen", tags={key: "genai_development"})  # a kind its user chose stays
    tracking.experiment_id(client, "chosen", None)
    assert client.get_experiment(chosen).tags[key] == "genai_development"
    assert tracking.runs_view_url("http://127.0.0.1:5000/", "7") == \
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"


@pytest.mark.slow
def test_the_printed_link_opens_the_runs_with_the_report(tmp_path, mlflow_server):
    spec = helpers.search_file(tmp_path, "uiview", 2, {"model.norm_type": {"grid": ["layer", "none"]}})
    r = run_python("-m", "platform.search", str(spec), "--project-dir", str(tmp_path / "project"), "--tracking-uri",
                   mlflow_server, env=env_for(tmp_path / "cache"), cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("uiview")
    assert exp.tags[tracking.EXPERIMENT_KIND[0]] == tracking.EXPERIMENT_KIND[1]
    (link,) = re.findall(r"^MLflow UI: (\S+)$", r.stdout, re.M)
    assert link == tracking.runs_view_url(mlflow_server, exp.experiment_id)
    (parent,), children = helpers.runs_of(mlflow_server, "uiview")
    assert sorted(c.info.run_name for c in children) == ["norm_type=layer", "norm_type=none"]

    with browser_page() as (page, _):
        page.goto(link)
        row = page.locator("[role=row]", has_text=parent.info.run_name).first
        row.wait_for(timeout=60_000)
        # not sent to the GenAI overview (where MLflow's default GenAI switch sends an experiment)
        assert f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in page.url
        row.locator('[col-id="attributes.`Run Name`"] button').click()  # expand the parent: its children
        for child in children:
            page.locator("[role=row]", has_text=child.info.run_name).first.wait_for(timeout=30_000)

        page.goto(f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts"
                  "?workflowType=machine_learning")
        page.get_by_text("report.html", exact=True).first.click()
        report = page.frame_locator("iframe").first
        report.locator("section#trials").wait_for(timeout=60_000)
        assert report.locator("#trials-table tbody tr").count() == len(children)
