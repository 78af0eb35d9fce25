"""Search-space files (search_spaces/*.yaml): their format, whole-file validation and conversion to Ray Tune.

A search-space file names Hydra keys of the composed DCell config and how to sample them; a trial's config is
`compose(space.overrides + trial_overrides(sampled))`. Format (every key below, and only these):

    name: norms                      # [A-Za-z0-9_.-]+, the MLflow experiment name
    description: one line on what is compared
    overrides: [data=yeast_dna_repair, train.epochs=5]   # fixed Hydra overrides of every trial (optional)
    metric: val/pearson              # one of KNOWN_METRICS (what the trial function reports each epoch)
    mode: max                        # max | min; must agree with the metric's direction where it has one
    search:
      algorithm: optuna              # optuna (TPE, the default) | random | grid
      seed: 0                        # seeds TPE / the random variant generator
      num_samples: 8                 # trials; for `grid`: repeats of the whole grid (Ray Tune semantics)
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
      train.seed: {grid: [0, 1, 2]}              # algorithm random or grid only
      train.batch_size: {fixed: 64}              # a constant, logged with the sampled parameters

Required: everything above except `overrides`, `search.algorithm` (optuna), `scheduler.type` (asha),
`scheduler.max_t` (train.epochs) and `resources.gpu` (0); none of these defaults replaces an invalid value.

Rules that are not obvious from the format: `optuna` takes no `grid` distribution (TPE cannot enumerate);
`grid` takes only `grid` and `fixed`; `random` takes everything (each grid point is combined with
`num_samples` random draws, as in Ray Tune). A key may not be both searched and fixed in `overrides` or on
the command line. The fixed config (base + overrides) must pass each section's `validate()`. Every sampled
value (each choice / grid value, both range ends, the fixed value) is type-checked against the structured
config, and its section's `validate()` must accept it for at least one combination of the other searched
values of that section (cross-field rules such as heads dividing the embedding size). `resources.gpu` must
agree with `train.device` (cpu: no GPU; cuda: a GPU).

`load_search_space` reports every problem at once in one SearchSpaceError, a `FILE:LINE: key.path: problem`
line each (`FILE: command line: ...` for command-line overrides and flags).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from dcell_core.search.overrides import format_override_value, trial_overrides
from dcell_core.search.spec import (KNOWN_METRICS, TOP_KEYS, TOP_REQUIRED, Parameter, Resources, SchedulerSettings,
                                    SearchSettings, SearchSpace, SearchSpaceError, _check_keys, _Report)
from dcell_core.search.spec_config import (_check_base_config, _check_device, _check_parameter_keys, _check_values,
                                           _compose_fixed, _max_epochs, _parse_overrides)
from dcell_core.search.spec_fields import (_check_algorithm, _name, _objective, _parameters, _resources,
                                           _scheduler_settings, _search_settings, _text_field)
from dcell_core.search.spec_yaml import _read_yaml
from dcell_core.search.tune_bridge import make_scheduler, make_search_alg, to_tune_param_space

__all__ = ["KNOWN_METRICS", "Parameter", "Resources", "SchedulerSettings", "SearchSettings", "SearchSpace",
           "SearchSpaceError", "format_override_value", "load_search_space", "make_scheduler", "make_search_alg",
           "to_tune_param_space", "trial_overrides"]



def load_search_space(path: str | Path, extra_overrides: Sequence[str] = (), *, num_samples: Optional[int] = None,
                      max_concurrent: Optional[int] = None) -> SearchSpace:
    """Parse and validate a whole search-space file; raise one SearchSpaceError listing every problem.

    extra_overrides (command-line Hydra overrides) come after the file's overrides; num_samples / max_concurrent
    (command-line flags) replace the file's values.
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
    _check_keys(report, (), data, TOP_KEYS, TOP_REQUIRED)
    name, description = _name(report, data), _text_field(report, data, "description")
    metric, mode = _objective(report, data)
    search = _search_settings(report, data, num_samples, max_concurrent)
    resources = _resources(report, data)
    params = _parameters(report, data)
    _check_algorithm(report, data, params)
    overrides = _parse_overrides(report, data, list(extra_overrides))
    cfg = _compose_fixed(report, overrides)
    params = _check_parameter_keys(report, cfg, params, overrides)
    _check_values(report, cfg, params, _check_base_config(report, cfg, overrides))
    _check_device(report, cfg, resources, params)
    scheduler = _scheduler_settings(report, data, _max_epochs(cfg, params, data))
    report.raise_if_any()
    return SearchSpace(path=path, name=name, description=description, overrides=tuple(o.text for o in overrides),
                       metric=metric, mode=mode, search=search, scheduler=scheduler, resources=resources,
                       parameters=tuple(params))
