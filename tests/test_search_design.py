"""Exact designs (grids, each configuration once), distinct TPE / random suggestions, replicates, and the schema's
messages for problems the older fixtures do not show."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from dcell_core.search import SearchSpaceError, load_search_space, make_search_alg, to_tune_param_space
from dcell_core.search.distinct import config_key
from helpers import REPO

NORMS = REPO / "search_spaces" / "norms.yaml"

# Optuna warns that list choices cannot go to persistent storage; OptunaSearch keeps its study in memory.
pytestmark = pytest.mark.filterwarnings("ignore:Choices for a categorical distribution:UserWarning")


def problems(path: Path, **kw) -> list[str]:
    with pytest.raises(SearchSpaceError) as info:
        load_search_space(path, **kw)
    return [line.strip() for line in str(info.value).splitlines()[1:]]


def variant(tmp_path: Path, base: Path = NORMS, **changes) -> Path:
    """A copy of a search file with top-level keys replaced (None: removed); search / parameters merged."""
    data = yaml.safe_load(base.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        elif key in ("search", "parameters"):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / base.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def at(path: Path, start: str) -> int:
    """The line of path whose text (indentation stripped) starts with `start`."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(start))


def drive(searcher, n: int, start: int = 0) -> list[dict]:
    """n suggestions, each completed before the next, scored by a fixed function of the configuration."""
    configs = []
    for i in range(start, start + n):
        cfg = searcher.suggest(str(i))
        searcher.on_trial_complete(str(i), {"val/pearson": (hash(config_key(cfg)) % 1000) / 1000,
                                            "training_iteration": 1})
        configs.append(cfg)
    return configs


def searcher_for(space):
    searcher = make_search_alg(space).searcher
    assert searcher.set_search_properties(None, None, to_tune_param_space(space))
    return searcher


# ---------------------------------------------------------------------------------------------------------
# Distinct suggestions


def test_norms_search_suggests_eight_distinct_configurations_the_same_way_twice():
    space = load_search_space(NORMS)
    assert (space.search.algorithm, space.search.num_samples, space.search.seed) == ("optuna", 8, 0)
    first, second = drive(searcher_for(space), 8), drive(searcher_for(space), 8)
    assert first == second
    assert len({config_key(c) for c in first}) == 8


def test_plain_optuna_search_repeats_norms_configurations():
    # What the distinct searcher prevents: Ray's OptunaSearch with the same seed draws a configuration twice
    # within the README's 8 trials (the README's search once ran two identical trials).
    from ray.tune.search.optuna import OptunaSearch

    space = load_search_space(NORMS)
    plain = OptunaSearch(metric=space.metric, mode=space.mode, seed=space.search.seed)
    plain.set_search_properties(None, None, to_tune_param_space(space))
    assert len({config_key(c) for c in drive(plain, 8)}) < 8


@pytest.mark.parametrize("algorithm", ["optuna", "random"])
def test_a_small_space_is_used_up_without_repeats(tmp_path, algorithm):
    # 6 configurations, 5 trials: the last suggestions have few configurations left, reached by re-asking or by
    # the fallback; then a sixth suggestion is the one configuration left.
    path = variant(tmp_path, search={"algorithm": algorithm, "num_samples": 5},
                   parameters={"model.activation": {"choice": ["tanh", "selu"]},
                               "model.norm_order": {"fixed": "act_norm"}})
    space = load_search_space(path)
    assert space.search.algorithm == algorithm
    configs = drive(searcher_for(space), 6)
    assert len({config_key(c) for c in configs}) == 6


def test_distinct_searcher_survives_save_and_restore(tmp_path):
    space = load_search_space(NORMS)
    whole = drive(searcher_for(space), 8)
    first = searcher_for(space)
    head = drive(first, 4)
    first.save(str(tmp_path / "searcher.pkl"))
    restored = searcher_for(space)
    restored.restore(str(tmp_path / "searcher.pkl"))
    tail = drive(restored, 4, start=4)
    assert head + tail == whole
    assert pickle.loads(pickle.dumps(make_search_alg(space))).searcher._given == {}


# ---------------------------------------------------------------------------------------------------------
# Grids and the number of distinct configurations


def test_every_configuration_asked_for_runs_as_a_grid():
    from ray.tune.search import BasicVariantGenerator

    from dcell_core.search.driver import expected_trials

    space = load_search_space(NORMS, num_samples=30)
    assert (space.search.algorithm, space.search.num_samples) == ("grid", 1)
    assert [p.kind for p in space.parameters] == ["grid"] * 3
    assert len(space.notes) == 1 and "30 distinct configurations: run as a grid" in space.notes[0]
    assert to_tune_param_space(space)["model.norm_type"] == {"grid_search": ["batch", "layer", "none"]}
    assert isinstance(make_search_alg(space), BasicVariantGenerator)
    assert expected_trials(space, space.search.num_samples) == 30


def test_more_samples_than_configurations_is_refused(tmp_path):
    found = problems(NORMS, num_samples=31)
    assert len(found) == 1 and found[0].startswith(f"{NORMS}: command line: --num-samples: search.num_samples 31")
    assert "30 distinct configurations" in found[0]
    path = variant(tmp_path, search={"num_samples": 40})
    found = problems(path)
    line = at(path, "num_samples")
    assert len(found) == 1 and found[0].startswith(f"{path}:{line}: search.num_samples: 40 is more than the 30")


def test_platform_search_exits_2_on_too_many_samples(subprocess_env, tmp_path):
    from helpers import run_python

    r = run_python("-m", "platform.search", str(NORMS), "--num-samples", "31", "--project-dir", str(tmp_path),
                   env=subprocess_env)
    assert r.returncode == 2 and "search.num_samples 31 is more than the 30 distinct configurations" in r.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_grid_enumerates_choices_and_randint_once(tmp_path):
    path = variant(tmp_path, search={"algorithm": "grid", "num_samples": 1},
                   parameters={"model.norm_type": {"grid": ["batch", "layer"]},
                               "model.norm_order": {"fixed": "act_norm"},
                               "model.subsystem_layers": {"randint": [1, 3]}})
    space = load_search_space(path)
    by_key = {p.key: p for p in space.parameters}
    assert by_key["model.subsystem_layers"].values == (1, 2, 3) and by_key["model.activation"].kind == "grid"
    assert space.notes == () and space.search.num_samples == 1
    assert load_search_space(path, num_samples=30).search.num_samples == 1  # 2 x 3 x 5: the grid's size, once
    found = problems(path, num_samples=2)
    assert len(found) == 1 and "a grid runs each of its 30 distinct configurations once; give 1 or 30" in found[0]


def test_ranges_of_numbers_have_no_limit_on_samples(tmp_path):
    path = variant(tmp_path, search={"num_samples": 500}, parameters={"model.init_range": {"uniform": [0.01, 0.1]}})
    space = load_search_space(path)
    assert (space.search.algorithm, space.search.num_samples, space.notes) == ("optuna", 500, ())


# ---------------------------------------------------------------------------------------------------------
# Replicates


def test_replicates_from_the_file_and_the_command_line(tmp_path):
    assert load_search_space(NORMS).replicates == 1
    path = variant(tmp_path, replicates=3)
    assert load_search_space(path).replicates == 3
    assert load_search_space(path, replicates=2).replicates == 2
    found = problems(path, replicates=0)
    assert found == [f"{path}: command line: --replicates: expected an integer >= 1, got 0"]


def test_replicates_must_be_a_positive_integer_and_exclude_searched_seeds(tmp_path):
    path = variant(tmp_path, replicates=True, parameters={"train.seed": {"choice": [0, 1]}})
    assert problems(path) == [f"{path}:{at(path, 'replicates')}: replicates: expected an integer >= 1, got True"]
    path = variant(tmp_path, replicates=2, parameters={"train.seed": {"choice": [0, 1]}})
    found = problems(path)
    line = at(path, "train.seed")
    assert len(found) == 1 and found[0].startswith(f"{path}:{line}: parameters.train.seed: searched together with "
                                                   "replicates: 2")
    assert load_search_space(variant(tmp_path, replicates=2, parameters={"train.seed": {"fixed": 4}})).replicates == 2


def test_replicate_split_is_a_boolean_that_needs_replicates(tmp_path):
    assert load_search_space(NORMS).replicate_split is False
    assert load_search_space(variant(tmp_path, replicates=2, replicate_split=True)).replicate_split is True
    path = variant(tmp_path, replicate_split=True)
    assert problems(path) == [f"{path}:{at(path, 'replicate_split')}: replicate_split: true needs replicates > 1 (with "
                              "one replicate there is no other split)"]
    path = variant(tmp_path, replicates=2, replicate_split="sometimes")
    assert problems(path) == [f"{path}:{at(path, 'replicate_split')}: replicate_split: expected true or false, got "
                              "'sometimes'"]


def test_replicates_flag_is_parsed():
    from dcell_core.search.cli import parser

    assert parser().parse_intermixed_args(["f.yaml", "--replicates", "3"]).replicates == 3


# ---------------------------------------------------------------------------------------------------------
# Schema messages


def test_schema_problems_name_their_keys(tmp_path):
    path = tmp_path / "schema.yaml"
    path.write_text("\n".join([
        "name: schema", "description: schema problems", "metric: val/pearson", "mode: max",
        "search: [optuna]",                                               # 5
        "scheduler: {type: ashaa, grace_period: 1}",                      # 6
        "resources: {cpu: 0, gpu: true}",                                 # 7
        "parameters:",
        "  train.lr: {fixed: {a: 1}}",                                    # 9
        "  train.seed: {choice: [1, 1]}",                                 # 10
        "  model.norm_type: {choice: [batch], uniform: [0, 1]}",          # 11
        "  1bad: {choice: [1, 2]}",                                       # 12
        "colour: blue",                                                   # 13
    ]) + "\n")
    expected = [
        f"{path}:5: search: expected a mapping, got list ['optuna']",
        f"{path}:6: scheduler.type: 'ashaa' is not one of asha, median, none (did you mean 'asha'?)",
        f"{path}:7: resources.cpu: expected a number > 0, got 0",
        f"{path}:7: resources.gpu: expected a number >= 0 (fractions share a GPU), got True",
        f"{path}:9: parameters.train.lr.fixed: unsupported value {{'a': 1}} (dict)",
        f"{path}:10: parameters.train.seed.choice: value 1 (item 1) repeats item 0",
        f"{path}:11: parameters.model.norm_type: expected exactly one distribution",
        f"{path}:12: parameters.1bad: expected a dotted Hydra key",
        f"{path}:13: colour: unknown key; valid keys: name, description, overrides, metric, mode, replicates,",
    ]
    found = problems(path)
    for line in expected:
        assert any(f.startswith(line) for f in found), (line, found)
    assert len(found) == len(expected), found


@pytest.mark.slow
def test_norms_search_in_ray_tune_runs_eight_distinct_configurations(tmp_path):
    # The searcher inside a real local Tune run (a trial function that reports once, no training): 8 trials, 2 at
    # a time, 8 different configurations.
    import ray
    from ray import tune

    space = load_search_space(NORMS)

    def score(config):
        tune.report({"val/pearson": (hash(config_key(config)) % 1000) / 1000})

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = tune.Tuner(score, param_space=to_tune_param_space(space), tune_config=tune.TuneConfig(
            search_alg=make_search_alg(space), num_samples=space.search.num_samples),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    finally:
        ray.shutdown()
    configs = {config_key(r.config) for r in results}
    assert len(results) == 8 and len(configs) == 8 and not results.errors
