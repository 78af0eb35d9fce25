"""Search-space files (search_spaces/*.yaml): their format, whole-file validation and conversion to Ray Tune.

A search-space file names Hydra keys of the composed DCell config and how to sample them; a trial's config is
`compose(space.overrides + trial_overrides(sampled))`. Format (every key below, and only these):

    name: norms                      # [A-Za-z0-9_.-]+, the MLflow experiment name
    description: one line on what is compared
    overrides: [data=yeast_dna_repair, train.epochs=5]   # fixed Hydra overrides of every trial (optional)
    metric: val/pearson              # one of KNOWN_METRICS (what the trial function reports each epoch)
    mode: max                        # max | min; must agree with the metric's direction where it has one
    replicates: 1                    # seeds each trial trains (optional, default 1; the platform derives them)
    replicate_split: false           # optional: replicates after the first also deal their own data split
    search:
      algorithm: optuna              # optuna (TPE, the default) | random | grid
      seed: 0                        # seeds TPE / the random sampler
      num_samples: 8                 # trials, at most the number of distinct configurations; grid: 1 (or that number)
      max_concurrent: 2              # trials running at once
    scheduler:
      type: asha                     # asha (the default) | median | none
      grace_period: 1                # asha, median: epochs before a trial can be stopped
      reduction_factor: 2            # asha only: > 1
      max_t: 5                       # asha only, optional: defaults to (and must equal) the largest train.epochs
      min_samples_required: 3        # median only
    resources: {cpu: 1, gpu: 0}      # per trial; fractions allowed; gpu optional (0)
    parameters:                      # Hydra key -> exactly one distribution
      model.norm_type: {choice: [batch, layer, none]}
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}   # lo > 0
      loss.alpha: {uniform: [0.0, 1.0]}
      model.subsystem_layers: {randint: [1, 3]}  # integers, BOTH bounds inclusive: 1, 2 or 3
      train.seed: {grid: [0, 1, 2]}              # algorithm grid only (there, choice and randint are enumerated too)
      train.batch_size: {fixed: 64}              # a constant, logged with the sampled parameters

Required: everything above except `overrides`, `replicates` (1), `replicate_split` (false), `search.algorithm` (optuna), `scheduler.type`
(asha), `scheduler.max_t` (train.epochs) and `resources.gpu` (0); none of these defaults replaces an invalid value.
The structure is the pydantic models of dcell_core.search.spec_fields; the checks against the config are in
spec_config.

Designs: no search runs one configuration twice. `grid` runs every combination of its parameters' values once
(Tune's grid_search, in its fixed order). `optuna` (TPE) and `random` sample, and a sampled configuration equal to
an earlier trial's is asked again (dcell_core.search.distinct). When every parameter is finite (choice, grid,
randint, fixed), `num_samples` may not exceed the number of distinct configurations, and when it equals it the
search runs as a grid (a note says so). `train.seed` may not be searched with `replicates` > 1. A key may not be
both searched and fixed in `overrides` or on the command line.

Against the config: the fixed config (base + overrides) must pass each section's `validate()`. Every sampled value
(each choice / grid value, both range ends, the fixed value) is type-checked against the structured config, and
its section's `validate()` must accept it for at least one combination of the other searched values of that
section (cross-field rules such as heads dividing the embedding size). `resources.gpu` must
agree with `train.device` (cpu: no GPU; cuda: a GPU).

`load_search_space` reports every problem at once in one SearchSpaceError, a `FILE:LINE: key.path: problem`
line each (`FILE: command line: ...` for command-line overrides and flags).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from dcell_core.search.overrides import format_override_value, trial_overrides
from dcell_core.search.spec import (ALGORITHMS, KNOWN_METRICS, Parameter, SearchSpace, SearchSpaceError, _is_int,
                                    _Report)
from dcell_core.search.spec_config import (_check_base_config, _check_device, _check_kinds, _check_parameter_keys,
                                           _check_scheduler, _check_values, _compose_fixed, _design, _max_epochs,
                                           _parse_overrides)
from dcell_core.search.spec_fields import Resources, SchedulerSettings, SearchSettings, file_problems, valid_part
from dcell_core.search.spec_yaml import _read_yaml
from dcell_core.search.tune_bridge import make_scheduler, make_search_alg, to_tune_param_space

__all__ = ["KNOWN_METRICS", "Parameter", "Resources", "SchedulerSettings", "SearchSettings", "SearchSpace",
           "SearchSpaceError", "format_override_value", "load_search_space", "make_scheduler", "make_search_alg",
           "to_tune_param_space", "trial_overrides"]


def load_search_space(path: str | Path, extra_overrides: Sequence[str] = (), *, num_samples: Optional[int] = None,
                      max_concurrent: Optional[int] = None, replicates: Optional[int] = None) -> SearchSpace:
    """Parse and validate a whole search-space file; raise one SearchSpaceError listing every problem.

    extra_overrides (command-line Hydra overrides) come after the file's overrides; num_samples / max_concurrent /
    replicates (command-line flags) replace the file's values.
    """
    if isinstance(extra_overrides, str):
        raise TypeError(f"extra_overrides must be a sequence of overrides, not the string {extra_overrides!r}")
    path = Path(path)
    data, lines, duplicates = _read_yaml(path)
    report = _Report(str(path), lines)
    for dup_path, message in duplicates:
        report.add(dup_path, message)
    if not isinstance(data, dict):
        report.add((), f"expected a mapping of settings, got {type(data).__name__} {data!r}")
        report.raise_if_any()
    for key_path, message in file_problems(data):
        report.add(key_path, message)
    flags = {"num_samples": _flag(report, "num_samples", num_samples),
             "max_concurrent": _flag(report, "max_concurrent", max_concurrent)}
    search = valid_part(data, "search")
    if search is not None:
        search = search.model_copy(update={k: v for k, v in flags.items() if v is not None})
    replicates = _flag(report, "replicates", replicates) if replicates is not None else valid_part(data, "replicates")
    replicate_split = valid_part(data, "replicate_split")
    if replicate_split and replicates == 1:
        report.add(("replicate_split",), "true needs replicates > 1 (with one replicate there is no other split)")
    metric, mode = valid_part(data, "metric"), valid_part(data, "mode")
    if KNOWN_METRICS.get(metric) and mode and mode != KNOWN_METRICS[metric]:
        report.add(("mode",), f"{metric} is better when {'higher' if mode == 'min' else 'lower'} (mode "
                              f"{KNOWN_METRICS[metric]}); mode {mode} would select the worst trials")
    params = [Parameter(key, d.kind, (d.fixed,) if d.kind == "fixed" else getattr(d, d.kind))
              for key, d in (valid_part(data, "parameters") or {}).items()]
    _check_kinds(report, search.algorithm if search else _algorithm(data), params, replicates)
    overrides = _parse_overrides(report, valid_part(data, "overrides") or [], list(extra_overrides))
    cfg = _compose_fixed(report, overrides)
    params = _check_parameter_keys(report, cfg, params, overrides)
    _check_values(report, cfg, params, _check_base_config(report, cfg, overrides))
    resources = valid_part(data, "resources")
    _check_device(report, cfg, resources, params)
    scheduler = _check_scheduler(report, valid_part(data, "scheduler"), _max_epochs(cfg, params, data))
    notes: tuple[str, ...] = ()
    if not report.items:  # the design is judged on a file that is right in every other way
        search, params, notes = _design(report, search, params, flags["num_samples"] is not None)
    report.raise_if_any()
    return SearchSpace(path=path, name=data["name"], description=data["description"],
                       overrides=tuple(o.text for o in overrides), metric=metric, mode=mode, search=search,
                       scheduler=scheduler, resources=resources, parameters=tuple(params), replicates=replicates,
                       replicate_split=bool(replicate_split), notes=notes)


def _flag(report: _Report, key: str, value: Any) -> Optional[int]:
    """A command-line count (None: not given), under the same rule as the file's value."""
    if value is not None and not (_is_int(value) and value >= 1):
        report.add_cli(f"--{key.replace('_', '-')}", f"expected an integer >= 1, got {value!r}")
        return None
    return value


def _algorithm(data: dict) -> Optional[str]:
    """The algorithm of a file whose search settings are invalid in another way (to check the parameters' kinds)."""
    search = data.get("search")
    algorithm = search.get("algorithm", "optuna") if isinstance(search, dict) else None
    return algorithm if algorithm in ALGORITHMS else None
