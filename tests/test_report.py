"""The search report: its statistics on hand-made tables (default tier), and the report of a real small search
(real local Ray, sqlite MLflow, the CLIs as a user runs them) loaded in headless chromium (slow)."""
from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

import helpers
from helpers import browser_page, env_for, run_python

from dcell_core.search.ledger import TrialRecord
from dcell_core.search.report import _baselines_section
from dcell_core.search.reporting import stats
from dcell_core.search.reporting.page import SECTIONS
from dcell_core.train.baselines import KINDS


def table(values: dict[str, list], scores: list[float]) -> pd.DataFrame:
    return pd.DataFrame({**values, stats.SCORE: scores})


# ---- statistics (default tier) ---------------------------------------------------------------------------------
def test_separated_values_are_resolved_with_their_intervals():
    t = table({"norm": ["layer"] * 3 + ["none"] * 3}, [0.90, 0.92, 0.94, 0.50, 0.52, 0.54])
    m = stats.marginal_effect(t, "norm", "choice", "max")
    assert m.resolved and m.statement.startswith("norm: resolved at 6 scored trials")
    best, worst = m.effects
    assert (best.value, best.n, worst.value) == ("layer", 3, "none")
    assert best.mean == pytest.approx(0.92)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2) x s / sqrt(n)
    assert (best.low, best.high) == (pytest.approx(0.92 - half), pytest.approx(0.92 + half))
    assert stats.marginal_effect(t, "norm", "choice", "min").effects[0].value == "none"  # best first by mode
    replicated = stats.marginal_effect(t.assign(**{stats.REPLICATES: 3}), "norm", "choice", "max")
    assert replicated.statement.startswith("norm: resolved at 6 scored trials of 3 replicates each:")


def test_overlapping_or_single_trial_values_are_not_resolved():
    spread = table({"act": ["relu", "relu", "tanh", "tanh"]}, [0.5, 0.9, 0.6, 0.8])
    m = stats.marginal_effect(spread, "act", "choice", "max")
    assert not m.resolved and "intervals overlap" in m.statement
    thin = table({"act": ["relu", "tanh", "gelu"]}, [0.5, 0.9, 0.6])
    m = stats.marginal_effect(thin, "act", "choice", "max")
    assert not m.resolved and "fewer than two of its values have 2 or more" in m.statement
    assert all(math.isnan(e.low) for e in m.effects)
    unscored = table({"act": ["relu", "relu", "tanh"]}, [0.5, 0.6, float("nan")])  # NaN scores are left out
    assert "only one value" in stats.marginal_effect(unscored, "act", "choice", "max").statement


def test_continuous_values_fall_in_quantile_bins():
    lrs = [f"{x:.4g}" for x in (1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3, 3.2e-3, 6.4e-3, 9e-3)]
    m = stats.marginal_effect(table({"lr": lrs}, [0.1 * i for i in range(8)]), "lr", "loguniform", "max")
    assert len(m.effects) == stats.BINS and all(e.n == 2 for e in m.effects)
    assert m.effects[0].value == "[0.0064, 0.009]"
    few = stats.marginal_effect(table({"layers": ["1", "2", "1", "2"]}, [0.1, 0.2, 0.1, 0.2]), "layers", "randint",
                                "max")
    assert [e.value for e in few.effects] == ["2", "1"]  # a narrow randint keeps its values


def test_importances_use_categorical_distributions_and_flag_few_trials():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists = {"norm": stats.optuna_distribution("choice", ("batch", "layer", "none")),
             "lr": stats.optuna_distribution("loguniform", (1e-4, 1e-2)),
             "layers": stats.optuna_distribution("randint", (1, 3)), "seed": stats.optuna_distribution("fixed", (0,))}
    assert isinstance(dists["norm"], CategoricalDistribution) and dists["norm"].choices == ("batch", "layer", "none")
    assert isinstance(dists["lr"], FloatDistribution) and dists["lr"].log
    assert isinstance(dists["layers"], IntDistribution) and dists["seed"] is None
    norms = ["batch", "layer", "none"] * 3
    t = table({"norm": norms, "lr": ["0.001"] * 9, "layers": ["1", "2", "3"] * 3},
              [{"batch": 0.5, "layer": 0.9, "none": 0.1}[n] for n in norms])
    imp = stats.importances(t, dists, "max")
    assert imp["trials"] == 9 and not imp["reliable"] and imp["constant"] == ["lr"]
    for shares in imp["evaluators"].values():
        assert max(shares, key=shares.get) == "norm"  # the score depends on the norm only
    assert "need at least 3" in stats.importances(t.head(2), dists, "max")["not_computed"]
    with pytest.raises(ValueError, match="'group' is not one of the search file's choices"):
        stats.importances(t.assign(norm=["group", "batch", "layer"] * 3), dists, "max")


def test_collapse_rule():
    assert stats.collapse_reasons({"val/collapse": 0.0, "val/std_ratio": 0.8, "val/pearson": 0.7}) == []
    flagged = stats.collapse_reasons({"val/collapse": 1.0, "val/std_ratio": 0.01, "val/pred_std": 1e-4,
                                      "val/pearson": float("nan")})
    assert flagged[0].startswith("val/collapse 1") and "NaN while the targets vary" in flagged[1]
    assert "no correlation" in stats.collapse_reasons({"val/collapse": 0.0, "val/std_ratio": 0.5,
                                                       "val/pearson": 0.01})[0]
    # constant targets (std_ratio NaN): a NaN correlation says nothing about the model
    assert stats.collapse_reasons({"val/collapse": float("nan"), "val/std_ratio": float("nan"),
                                   "val/pearson": float("nan")}) == []


class Rows(HTMLParser):
    """The cell texts of each body row of an HTML table."""
    def __init__(self, html: str):
        super().__init__()
        self.rows, self.body = [], False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.body |= tag == "tbody"
        if self.body and tag == "tr":
            self.rows.append([])

    def handle_endtag(self, tag):
        self.body &= tag != "tbody"

    def handle_data(self, data):
        if self.body and self.rows and data.strip():
            self.rows[-1].append(data.strip())


FITTED = {"additive": {"val/pearson": 0.5, "val/mse": 0.2, "test/pearson": 0.45, "test/mse": 0.25},
          "multiplicative": {"val/pearson": 0.8, "val/mse": 0.1, "test/pearson": 0.75, "test/mse": 0.12}}


def winner(score: float) -> TrialRecord:
    return TrialRecord(run=None, trial_id="t7", status="FINISHED", outcome="finished", epochs=3, budget=3,
                       score=score, eligible=True)


@pytest.mark.parametrize("metric, mode, score, better", [
    ("val/pearson", "max", 0.6, {"additive": True, "multiplicative": False}),
    ("val/pearson", "min", 0.6, {"additive": False, "multiplicative": True}),  # same numbers, other direction
    ("val/mse", "min", 0.15, {"additive": True, "multiplicative": False}),
    ("val/mse", "max", 0.15, {"additive": False, "multiplicative": True}),
])
def test_baselines_section_compares_the_winner_in_the_metric_direction(metric, mode, score, better):
    section = _baselines_section(FITTED, winner(score), metric, mode)
    test = metric.replace("val/", "test/")
    assert Rows(str(section["html"][0])).rows == [
        ["DCell winner (trial t7)", f"{score:.4f}"],
        *[[kind, f"{FITTED[kind][metric]:.4f}", f"{FITTED[kind][test]:.4f}"] for kind in FITTED]]
    assert section["lines"] == [
        ("resolved" if better[kind] else "unresolved",
         f"winner {score:.4f} vs {kind} {FITTED[kind][metric]:.4f}: {score - FITTED[kind][metric]:+.4f} "
         f"({'better' if better[kind] else 'not better'})") for kind in FITTED]


def test_baselines_section_without_a_comparable_winner_or_without_baselines():
    # a metric without a baseline counterpart: the baselines' val/pearson, no winner row and no verdicts
    section = _baselines_section(FITTED, winner(0.9), "val/spearman", "max")
    assert section["lines"] == [] and Rows(str(section["html"][0])).rows == [
        [kind, f"{FITTED[kind]['val/pearson']:.4f}", f"{FITTED[kind]['test/pearson']:.4f}"] for kind in FITTED]
    assert "val/pearson" in str(section["html"][0])
    assert len(Rows(str(_baselines_section(FITTED, None, "val/pearson", "max")["html"][0])).rows) == 2
    empty = _baselines_section({}, winner(0.9), "val/pearson", "max")
    assert "html" not in empty and empty["lines"] == [
        ("unresolved", "not recorded: this search's parent run holds no baselines")]


def test_report_cli_misuse_exits_2(tmp_path):
    r = run_python("-m", "platform.report", "norms", "--project-dir", str(tmp_path), env=env_for(tmp_path / "cache"))
    assert r.returncode == 2 and "no MLflow store" in r.stderr
    r = run_python("-m", "platform.report", env=env_for(tmp_path / "cache"))
    assert r.returncode == 2 and "required: search" in r.stderr


# ---- the report of a real search, in a browser (slow) ----------------------------------------------------------
TRIALS = 4


def check_page(page, errors: list[str], path: Path, trials: int) -> str:
    """Load a report file and check what every report holds; returns its header's facts."""
    page.goto(path.as_uri())
    page.wait_for_selector("#learning-curves .js-plotly-plot .main-svg")
    page.wait_for_selector("#parallel-coordinates .parcoords")
    assert errors == []
    for section in SECTIONS:
        assert page.locator(f"section#{section}").count() == 1, section
    assert page.locator("#trials-table tbody tr").count() == trials
    # one row per per-gene baseline under the winner's, and a verdict against each
    rows = page.locator("#baselines-table tbody tr").all_inner_texts()
    assert len(rows) == 1 + len(KINDS) and rows[0].startswith("DCell winner (trial ")
    assert [row.split()[0] for row in rows[1:]] == list(KINDS)
    assert page.locator("#baselines p.resolved, #baselines p.unresolved").count() == len(KINDS)
    # every categorical value is a labelled tick of the parallel-coordinates view
    ticks = page.locator("#parallel-coordinates .parcoords").first.text_content()
    assert all(v in ticks for v in ("batch", "layer", "none", "relu", "tanh"))
    verdicts = page.locator("#marginal-effects p.resolved, #marginal-effects p.unresolved").all_inner_texts()
    assert len(verdicts) >= 1 and all(re.search(r"^(model|train)\.\w+: (not )?resolved", v) for v in verdicts)
    assert "UNRELIABLE" in page.locator("#importances").inner_text()  # 4 trials, far below RELIABLE_TRIALS
    assert "Rule:" in page.locator("#collapse").inner_text()
    return page.locator("ul.facts").inner_text()


@pytest.mark.slow
def test_report_of_a_real_search_in_a_browser(tmp_path):
    from mlflow.tracking import MlflowClient

    project, env = tmp_path / "project", env_for(tmp_path / "cache")
    spec = helpers.search_file(tmp_path, "reported", 3, {
        "model.norm_type": {"choice": ["batch", "layer", "none"]},
        "model.activation": {"choice": ["relu", "tanh"]},
        "train.lr": {"loguniform": [1.0e-3, 1.0e-2]}},
        algorithm="optuna", num_samples=TRIALS, max_concurrent=2,
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2})
    r = run_python("-m", "platform.search", str(spec), "--project-dir", str(project), env=env, cwd=tmp_path,
                   timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (written,) = re.findall(r"^report: (\S+) ", r.stdout, re.M)
    name = Path(written).parent.parent.name
    assert Path(written) == project / "ray_results" / name / "summary" / "report.html"
    exp = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_experiment_by_name("reported")
    assert f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in r.stdout

    parents, children = helpers.runs_of(f"sqlite:///{project / 'mlflow.db'}", "reported")
    assert len(children) == TRIALS
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    logged = Path(client.download_artifacts(parents[0].info.run_id, "report.html", str(tmp_path / "logged")))

    out = tmp_path / "cli.html"
    r = run_python("-m", "platform.report", name, "--project-dir", str(project), "--output", str(out), env=env,
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"report of search {name} (parent run {parents[0].info.run_id}, FINISHED): {out}" in r.stdout
    with browser_page() as (page, errors):
        facts = [check_page(page, errors, path, TRIALS) for path in (logged, out)]
    # the driver writes its report before it closes the parent run; the CLI's report of the ended search says FINISHED
    assert f"parent run {parents[0].info.run_id}, MLflow" in facts[0]
    assert f"parent run {parents[0].info.run_id} (FINISHED)" in facts[1]



def test_a_one_parameter_design_is_judged_on_its_replicate_scores():
    """Two configurations, one trial each with 3 replicates: the interval of each value comes from its replicate
    scores (n = 3), so a clear difference is resolved and a noisy one is not."""
    def table(a, b):
        return pd.DataFrame({"layers": ["1", "2"], stats.SCORE: [sum(a) / 3, sum(b) / 3],
                             stats.REPLICATES: [3, 3], stats.REPLICATE_SCORES: [tuple(a), tuple(b)]})

    clear = stats.marginal_effect(table((0.90, 0.91, 0.92), (0.80, 0.81, 0.79)), "layers", "choice", "max")
    assert clear.resolved and [(e.value, e.n) for e in clear.effects] == [("1", 3), ("2", 3)]
    assert clear.effects[0].mean == pytest.approx(0.91)
    assert clear.effects[0].low == pytest.approx(stats.ledger.mean_interval([0.90, 0.91, 0.92])[1])
    noisy = stats.marginal_effect(table((0.90, 0.70, 0.95), (0.80, 0.88, 0.75)), "layers", "choice", "max")
    assert not noisy.resolved and "intervals overlap" in noisy.statement
    without = stats.marginal_effect(table((0.90, 0.91, 0.92), (0.80, 0.81, 0.79)).drop(
        columns=[stats.REPLICATE_SCORES]), "layers", "choice", "max")
    assert not without.resolved and "fewer than two of its values have 2 or more scores" in without.statement
