"""Search-space files: whole-file validation with line numbers, conversion to Ray Tune, trial overrides."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from dcell_core.config import compose
from dcell_core.search import (
    KNOWN_METRICS,
    SearchSpaceError,
    format_override_value,
    load_search_space,
    make_scheduler,
    make_search_alg,
    to_tune_param_space,
    trial_overrides,
)
from helpers import REPO

FIXTURES = REPO / "tests" / "data" / "search_spaces"
SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))


def problems(path: Path, extra=(), **kw) -> list[str]:
    with pytest.raises(SearchSpaceError) as info:
        load_search_space(path, extra, **kw)
    return [line.strip() for line in str(info.value).splitlines()[1:]]


def assert_problems(path: Path, expected: list[tuple], extra=(), **kw) -> None:
    """Each (line, key path, fragment) is one reported problem (line None: the command line); no others."""
    found = problems(path, extra, **kw)
    for line, key, fragment in expected:
        prefix = f"{path}:{line}: {key}: " if line is not None else f"{path}: command line: {key}: "
        assert any(p.startswith(prefix) and fragment in p for p in found), f"{prefix}...{fragment} not in {found}"
    assert len(found) == len(expected), found


# ---------------------------------------------------------------------------------------------------------
# Shipped files


def test_all_topic_files_are_shipped():
    assert {p.stem for p in SHIPPED} >= {"norms", "init", "embedding", "alpha", "ontology", "full"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_file_validates_and_fits_two_cores(path):
    space = load_search_space(path)
    assert space.name == path.stem
    cfg = compose(space.overrides)
    # Defaults must run on the 2-core demo machine: concurrent trials x cores each <= 2, no GPU, one torch thread
    # per reserved core, ASHA capped at the configured epochs.
    assert space.resources.cpu * space.search.max_concurrent <= 2 and space.resources.gpu == 0
    assert cfg.train.num_threads == space.resources.cpu
    assert cfg.data.name == "yeast_dna_repair"
    assert space.scheduler.type == "asha" and space.scheduler.max_t == cfg.train.epochs
    assert space.mode == KNOWN_METRICS[space.metric]
    assert set(to_tune_param_space(space)) == {p.key for p in space.parameters}
    assert "--num-samples" in path.read_text()  # the GPU-cluster comment block


EXPERIMENTS = sorted((REPO / "search_spaces" / "experiments").glob("*.yaml"))


def test_the_experiments_are_shipped():
    assert {p.stem for p in EXPERIMENTS} == {"norm", "activation_init", "embedding_attention", "alpha",
                                             "subsystem_layers", "containment", "optimizer"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_is_an_exact_design_that_fits_two_cores(path):
    """Each question as an exact design: every combination once, 2 replicates, every configuration to its full
    budget (no scheduler), on the 2-core demo; the optimizer space is sampled (TPE, distinct) with ASHA."""
    space = load_search_space(path)
    cfg = compose(space.overrides)
    assert space.name == "exp-" + path.stem.replace("_", "-")
    assert space.resources.cpu * space.search.max_concurrent <= 2 and space.resources.gpu == 0
    assert cfg.train.num_threads == space.resources.cpu and cfg.data.name == "yeast_dna_repair"
    assert all(p.kind in ("choice", "grid") for p in space.parameters)
    if path.stem == "optimizer":
        assert space.search.algorithm == "optuna" and space.scheduler.type == "asha"
    else:
        assert space.search.algorithm == "grid" and space.replicates == 2 and space.scheduler.type == "none"
        assert all(len(p.values) == 2 for p in space.parameters)  # the exact values of the question
    assert "_gpu.yaml" in path.read_text()  # the GPU-cluster comment block


def test_full_space_covers_every_topic_space():
    keys = {p.key for p in load_search_space(REPO / "search_spaces" / "full.yaml").parameters}
    for path in SHIPPED:
        if path.stem != "full":
            assert {p.key for p in load_search_space(path).parameters} <= keys, path.stem


# ---------------------------------------------------------------------------------------------------------
# Broken files: every problem at once, each with file, line and key


def test_many_problems_are_reported_together_with_lines_and_keys():
    assert_problems(FIXTURES / "many_problems.yaml", [
        (2, "name", "use only letters"),
        (6, "overrides[1]", "Key 'epoch' not in 'TrainConfig'"),
        (8, "mode", "val/mse is better when lower"),
        (9, "search", "missing required key 'max_concurrent'"),
        (12, "search.num_samples", "expected an integer >= 1, got 0"),
        (13, "search.max_concurent", "did you mean 'max_concurrent'?"),
        (21, "parameters.train.lr.loguniform", "lo > 0"),
        (22, "parameters.train.batch_size.choise", "did you mean 'choice'?"),
        (23, "parameters.train.momentum.uniform", "lo 0.9 must be < hi 0.5"),
        (24, "parameters.train.nonexistent_knob", "not a key of the composed config"),
        (25, "parameters.data.ontology.min_genes.choice", "non-empty list"),
        (26, "parameters.train.epochs", "also fixed by 'train.epochs=3' in overrides (line 5)"),
        (27, "parameters.train.seed.grid", "not allowed with algorithm optuna"),
    ])


def test_values_are_checked_against_the_composed_config():
    assert_problems(FIXTURES / "config_values.yaml", [
        (6, "overrides[1]", "Could not find 'data/no_such_data'"),
        (7, "overrides[2]", "not a valid Hydra override"),
        (8, "overrides[3]", "is a sweep"),
        (15, "parameters.train.epochs.choice[1]", "'many' of type 'str' could not be converted to Integer"),
        (15, "parameters.train.epochs.choice[2]", "'3.5' of type 'float' could not be converted to Integer"),
        (16, "parameters.data.ontology.min_genes.randint[0]", "min_genes: must be >= 1, got 0"),
        (17, "parameters.data.ontology.exclude_evidence.choice[1]", "str is not a ListConfig"),
        (18, "parameters.data.ontology", "names the config section data.ontology"),
        (19, "parameters.data.genotyps.seed", "did you mean 'data.genotypes.seed'?"),
        (20, "parameters.train.optimizer.fixed", "train.optimizer must be one of"),
    ])


def test_scheduler_algorithm_metric_and_duplicate_key_problems():
    assert_problems(FIXTURES / "scheduler_problems.yaml", [
        (5, "metric", "'val/loss' is never reported by the trial function (did you mean 'val/mse'?)"),
        (10, "scheduler.grace_period", "4 >= max_t 4"),
        (12, "scheduler.max_t", "6 != the largest train.epochs of any trial (4)"),
        (13, "scheduler.min_samples_required", "only for type median, not asha"),
        (16, "parameters.train.lr.uniform", "not allowed with algorithm grid"),
        (18, "parameters.train.seed", "key given twice (lines 17 and 18)"),
    ])


def test_model_values_fail_their_section_validation_unless_a_searched_value_rescues_them():
    # 5 heads pass with the searched 5-wide embedding, so only 3 heads are reported (see the fixture's comment).
    assert_problems(FIXTURES / "model_values.yaml", [
        (13, "parameters.model.norm_type.choice[1]", "'layr' not in"),
        (14, "parameters.model.num_attention_heads.choice[1]", "not divisible by 3 heads"),
        (16, "parameters.loss.alpha.uniform[0]", "alpha: must be >= 0, got -1.0"),
    ])


def test_yaml_syntax_error_names_file_and_line():
    path = FIXTURES / "syntax_error.yaml"
    found = problems(path)
    assert len(found) == 1 and found[0].startswith(f"{path}:6: YAML syntax error")


def test_document_must_be_a_mapping_and_file_must_exist(tmp_path):
    assert_problems(FIXTURES / "not_a_mapping.yaml", [(1, "(top level)", "expected a mapping")])
    with pytest.raises(SearchSpaceError, match="no such search-space file"):
        load_search_space(tmp_path / "absent.yaml")


def test_command_line_overrides_and_counts_are_validated_with_the_file():
    path = FIXTURES / "valid_optuna.yaml"
    assert_problems(path, [
        (None, "'train.nope=1'", "Key 'nope' not in 'TrainConfig'"),
        (None, "--num-samples", "expected an integer >= 1, got 0"),
        (11, "parameters.train.optimizer", "also fixed by 'train.optimizer=sgd' in the command line"),
    ], extra=["train.nope=1", "train.optimizer=sgd"], num_samples=0)


def test_command_line_overrides_follow_the_file_and_set_max_t():
    space = load_search_space(FIXTURES / "valid_optuna.yaml", ["train.epochs=9"], max_concurrent=5)
    assert space.overrides == ("data=yeast_dna_repair", "train.epochs=5", "train.epochs=9")
    assert space.scheduler.max_t == 9 and space.search.max_concurrent == 5


def test_missing_required_keys_are_listed(tmp_path):
    path = tmp_path / "bare.yaml"
    path.write_text("name: bare\nparameters:\n  train.lr: {uniform: [0.1, 0.2]}\n")
    found = problems(path)
    for key in ("description", "metric", "mode", "search", "scheduler", "resources"):
        assert any(p.startswith(f"{path}:1: (top level): missing required key '{key}'") for p in found), key


# ---------------------------------------------------------------------------------------------------------
# Conversion to Ray Tune


def test_param_space_domains_and_bounds():
    from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Uniform

    space = load_search_space(FIXTURES / "valid_optuna.yaml")
    ps = to_tune_param_space(space)
    assert isinstance(ps["train.optimizer"], Categorical) and ps["train.optimizer"].categories == ["adamw", "sgd"]
    assert isinstance(ps["train.momentum"], Float) and isinstance(ps["train.momentum"].get_sampler(), Uniform)
    assert (ps["train.momentum"].lower, ps["train.momentum"].upper) == (0.5, 0.99)
    assert isinstance(ps["train.lr"].get_sampler(), LogUniform)
    assert (ps["train.lr"].lower, ps["train.lr"].upper) == (1e-5, 1e-2)
    # randint bounds are inclusive in the file, Tune's upper is exclusive.
    assert isinstance(ps["data.ontology.min_genes"], Integer)
    assert (ps["data.ontology.min_genes"].lower, ps["data.ontology.min_genes"].upper) == (3, 6)
    assert ps["data.ontology.exclude_evidence"].categories == [["IGI"], ["IGI", "IEA"]]
    assert ps["train.batch_size"] == 32

    grid = to_tune_param_space(load_search_space(FIXTURES / "valid_grid.yaml"))
    assert grid["train.lr"] == {"grid_search": [1e-3, 1e-2]} and grid["train.batch_size"] == 128


def test_randint_samples_both_inclusive_bounds():
    space = load_search_space(FIXTURES / "valid_random.yaml")
    draws = to_tune_param_space(space)["data.genotypes.seed"].sample(size=400, random_state=0)
    assert set(int(d) for d in draws) == set(range(0, 10))


# Optuna warns that list choices cannot go to persistent storage; OptunaSearch keeps its study in memory.
@pytest.mark.filterwarnings("ignore:Choices for a categorical distribution:UserWarning")
def test_optuna_searcher_samples_inside_the_declared_space():
    space = load_search_space(FIXTURES / "valid_optuna.yaml")
    alg = make_search_alg(space)
    assert alg.max_concurrent == 3
    searcher = alg.searcher
    assert (searcher.metric, searcher.mode, searcher._seed) == ("val/spearman", "max", 7)
    assert searcher.set_search_properties(None, None, to_tune_param_space(space))
    seen = []
    for i in range(30):
        cfg = searcher.suggest(str(i))
        searcher.on_trial_complete(str(i), {"val/spearman": float(cfg["train.momentum"]), "training_iteration": 1})
        seen.append(cfg)
    assert {c["data.ontology.min_genes"] for c in seen} == {3, 4, 5}
    assert all(1e-5 <= c["train.lr"] <= 1e-2 and 0.5 <= c["train.momentum"] <= 0.99 for c in seen)
    assert {tuple(c["data.ontology.exclude_evidence"]) for c in seen} == {("IGI",), ("IGI", "IEA")}


def test_variant_generators_and_schedulers():
    from ray.tune.schedulers import FIFOScheduler, MedianStoppingRule
    from ray.tune.schedulers.async_hyperband import AsyncHyperBandScheduler
    from ray.tune.search import BasicVariantGenerator

    optuna_space = load_search_space(FIXTURES / "valid_optuna.yaml")
    asha = make_scheduler(optuna_space)
    assert isinstance(asha, AsyncHyperBandScheduler)
    assert (asha._time_attr, asha._metric, asha._mode, asha._max_t, asha._reduction_factor) == \
        ("training_iteration", "val/spearman", "max", 5, 3)
    assert [rung for rung, _ in asha._brackets[0]._rungs] == [2]  # grace 2, x3 -> 6 > max_t 5
    assert make_search_alg(optuna_space, 4).max_concurrent == 4
    with pytest.raises(ValueError, match="max_concurrent"):
        make_search_alg(optuna_space, 0)

    grid_space = load_search_space(FIXTURES / "valid_grid.yaml")
    gen = make_search_alg(grid_space)
    assert isinstance(gen, BasicVariantGenerator) and gen.max_concurrent == 1
    median = make_scheduler(grid_space)
    assert isinstance(median, MedianStoppingRule)
    assert (median._time_attr, median._grace_period, median._min_samples_required, median._mode) == \
        ("training_iteration", 2, 4, "min")

    from optuna.samplers import RandomSampler

    random_space = load_search_space(FIXTURES / "valid_random.yaml")
    random_alg = make_search_alg(random_space)
    assert isinstance(random_alg.searcher._sampler, RandomSampler) and random_alg.max_concurrent == 2
    assert type(make_scheduler(random_space)) is FIFOScheduler


# ---------------------------------------------------------------------------------------------------------
# Trial overrides


def test_trial_overrides_round_trip_through_compose():
    space = load_search_space(FIXTURES / "valid_random.yaml")
    tricky = "it's a \\ test, true"
    sampled = {"train.warmup_epochs": np.float64(0.1234567890123456789), "data.genotypes.seed": np.int64(7),
               "train.seed": 2, "data.description": tricky, "data.ontology.date_cutoff": None,
               "train.lr": 1.2345e-05, "data.ontology.exclude_evidence": ["IGI", "IEA"], "train.plots": np.bool_(False)}
    cfg = compose(list(space.overrides) + trial_overrides(sampled))
    assert type(cfg.train.warmup_epochs) is float and cfg.train.warmup_epochs == float(sampled["train.warmup_epochs"])
    assert type(cfg.data.genotypes.seed) is int and cfg.data.genotypes.seed == 7
    assert cfg.train.seed == 2 and cfg.data.description == tricky and cfg.data.ontology.date_cutoff is None
    assert cfg.train.lr == 1.2345e-05 and list(cfg.data.ontology.exclude_evidence) == ["IGI", "IEA"]
    assert cfg.train.plots is False


def test_values_sampled_by_tune_round_trip():
    space = load_search_space(FIXTURES / "valid_random.yaml")
    for seed in range(3):
        sampled = {k: (v["grid_search"][seed] if isinstance(v, dict) else
                       v.sample(random_state=seed) if hasattr(v, "sample") else v)
                   for k, v in to_tune_param_space(space).items()}
        cfg = compose(trial_overrides(sampled))
        for key, value in sampled.items():
            got = cfg
            for part in key.split("."):
                got = got[part]
            assert got == value and type(got) is type(value), (key, got, value)


@pytest.mark.parametrize("value", ["plain", "true", "null", "1", "1e-3", "a,b", "x=y", "it's", "\\'", "back\\",
                                   "two\\\\", "sp ace", "${oc.env:HOME}", "", "[a]", "ünï"])
def test_strings_survive_hydra_parsing(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for v in (value, [value, "b"]):
        parsed = OverridesParser.create().parse_override(f"k={format_override_value(v)}").value()
        assert parsed == v and type(parsed) is type(v)


@pytest.mark.parametrize("value", [0.1, 1e-300, 1e16, -2.5e-7, 1 / 3, math.pi, 0.0, 10**20, -3, True, None])
def test_numbers_survive_hydra_parsing_exactly(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f"k={format_override_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)


def test_unsupported_values_are_refused():
    with pytest.raises(TypeError, match="cannot write a dict"):
        trial_overrides({"train.lr": {"a": 1}})


def test_parameter_bounds_only_for_ranges():
    space = load_search_space(FIXTURES / "valid_optuna.yaml")
    by_key = {p.key: p for p in space.parameters}
    assert (by_key["data.ontology.min_genes"].low, by_key["data.ontology.min_genes"].high) == (3, 5)
    with pytest.raises(AttributeError, match="no bounds"):
        by_key["train.optimizer"].low


def test_fixture_files_parse_as_plain_yaml():
    # Guards the fixtures themselves: the broken ones are broken in what they say, not by accident.
    for path in FIXTURES.glob("*.yaml"):
        if path.stem != "syntax_error":
            yaml.safe_load(path.read_text())


def test_resources_must_agree_with_the_training_device(tmp_path):
    path = tmp_path / "device.yaml"
    text = (FIXTURES / "valid_grid.yaml").read_text()
    path.write_text(text.replace("overrides: [train.epochs=3]", "overrides: [train.epochs=3, train.device=cpu]")
                    .replace("resources: {cpu: 1, gpu: 0}", "resources: {cpu: 1, gpu: 0.5}"))
    assert_problems(path, [(9, "resources.gpu", "GPU reserved per trial but train.device=cpu")])
    assert_problems(FIXTURES / "valid_grid.yaml", [(9, "resources.gpu", "train.device=cuda but no GPU reserved")],
                    extra=["train.device=cuda"])
