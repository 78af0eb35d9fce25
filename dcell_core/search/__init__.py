"""Hyper-parameter search over the DCell config: search-space files and their conversion to Ray Tune."""
from dcell_core.search.space import (
    KNOWN_METRICS,
    Parameter,
    Resources,
    SchedulerSettings,
    SearchSettings,
    SearchSpace,
    SearchSpaceError,
    format_override_value,
    load_search_space,
    make_scheduler,
    make_search_alg,
    to_tune_param_space,
    trial_overrides,
)

__all__ = [
    "KNOWN_METRICS",
    "Parameter",
    "Resources",
    "SchedulerSettings",
    "SearchSettings",
    "SearchSpace",
    "SearchSpaceError",
    "format_override_value",
    "load_search_space",
    "make_scheduler",
    "make_search_alg",
    "to_tune_param_space",
    "trial_overrides",
]
