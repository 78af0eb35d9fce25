"""A SearchSpace as Ray Tune objects: the param_space, the search algorithm and the trial scheduler."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

from dcell_core.search.spec import Parameter, SearchSpace, _is_int


def to_tune_param_space(space: SearchSpace) -> dict[str, Any]:
    """Flat {Hydra key: ray.tune domain or constant}, the Tuner's param_space."""
    from ray import tune

    def domain(p: Parameter) -> Any:
        if p.kind == "choice":
            return tune.choice(copy.deepcopy(list(p.values)))
        if p.kind == "grid":
            return tune.grid_search(copy.deepcopy(list(p.values)))
        if p.kind == "uniform":
            return tune.uniform(float(p.low), float(p.high))
        if p.kind == "loguniform":
            return tune.loguniform(float(p.low), float(p.high))
        if p.kind == "randint":
            return tune.randint(p.low, p.high + 1)  # the file's hi is inclusive, Tune's upper is exclusive
        return copy.deepcopy(p.values[0])  # fixed

    return {p.key: domain(p) for p in space.parameters}


def make_search_alg(space: SearchSpace, max_concurrent: Optional[int] = None,
                    state_path: Optional[Path] = None) -> Any:
    """The search algorithm, limited to max_concurrent trials (default: the file's search.max_concurrent): Optuna's
    TPE or random sampler (DistinctOptunaSearch: no configuration twice), or for a grid Tune's variant generator
    (each grid_search combination once: the loader keeps a grid's num_samples at 1).

    With `state_path` (the search's state file), the limit is read again from that file whenever Tune restores the
    algorithm (a resumed search), so `--max-concurrent` given with `--resume` takes effect. Do not also set
    TuneConfig.max_concurrent_trials, nor TuneConfig metric / mode (the searcher and scheduler carry them; Ray
    refuses both at once).
    """
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from dcell_core.search.limits import StateLimitedConcurrency, StateLimitedVariants

    s = space.search
    limit = s.max_concurrent if max_concurrent is None else max_concurrent
    if not _is_int(limit) or limit < 1:
        raise ValueError(f"max_concurrent must be an integer >= 1, got {limit!r}")
    if s.algorithm in ("optuna", "random"):
        from optuna.samplers import RandomSampler

        from dcell_core.search.distinct import DistinctOptunaSearch

        # No space here: the searcher takes it from the Tuner's param_space (set_search_properties).
        searcher = DistinctOptunaSearch(metric=space.metric, mode=space.mode, seed=s.seed) \
            if s.algorithm == "optuna" else \
            DistinctOptunaSearch(metric=space.metric, mode=space.mode, sampler=RandomSampler(seed=s.seed))
        if state_path is None:
            return ConcurrencyLimiter(searcher, max_concurrent=limit)
        return StateLimitedConcurrency(searcher, max_concurrent=limit, state_path=state_path)
    if state_path is None:
        return BasicVariantGenerator(random_state=s.seed, max_concurrent=limit)
    return StateLimitedVariants(random_state=s.seed, max_concurrent=limit, state_path=state_path)


def make_scheduler(space: SearchSpace) -> Any:
    """The trial scheduler; one training_iteration = one epoch (the trial function reports once per epoch)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    sch = space.scheduler
    if sch.type == "asha":
        return ASHAScheduler(time_attr="training_iteration", metric=space.metric, mode=space.mode, max_t=sch.max_t,
                             grace_period=sch.grace_period, reduction_factor=sch.reduction_factor)
    if sch.type == "median":
        return MedianStoppingRule(time_attr="training_iteration", metric=space.metric, mode=space.mode,
                                  grace_period=sch.grace_period, min_samples_required=sch.min_samples_required)
    return FIFOScheduler()
