"""Optuna's samplers (TPE, random) through Ray Tune, never suggesting a configuration an earlier trial got.

A trial's seed is derived from its sampled values, so a repeated configuration would only reproduce an earlier
trial's numbers at the price of a trial. A sampled configuration equal to an earlier one is closed in the Optuna
study as failed (the sampler learns nothing from it) and the sampler is asked again; after MAX_ASKS repeats in a
row (a sampler converged on a small space), the first configuration no trial got yet is asked for explicitly.
The configurations given so far are part of the searcher's state, which Tune saves and restores on resume.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterator, Optional

from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from dcell_core.search.overrides import format_override_value

MAX_ASKS = 32


def config_key(config: dict) -> tuple:
    """Identical Hydra override text = the same trial configuration."""
    return tuple(sorted((key, format_override_value(value)) for key, value in config.items()))


class DistinctOptunaSearch(OptunaSearch):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._given: dict[tuple, str] = {}  # configuration -> the trial that got it

    def suggest(self, trial_id: str) -> Optional[dict]:
        if trial_id in self._ot_trials:  # asked again for a trial it already answered: the same answer
            return super().suggest(trial_id)
        for _ in range(MAX_ASKS):
            config = super().suggest(trial_id)
            if config_key(config) not in self._given:
                return self._give(config, trial_id)
            self._ot_study.tell(self._ot_trials.pop(trial_id), state=TrialState.FAIL)
        unseen = next((c for c in self._configurations() if config_key(c) not in self._given), None)
        if unseen is None:
            raise RuntimeError(f"trial {trial_id}: the sampler repeated earlier configurations {MAX_ASKS} times and no "
                               f"other configuration is left ({len(self._given)} given)")
        self._ot_study.enqueue_trial(unseen)
        return self._give(super().suggest(trial_id), trial_id)

    def _give(self, config: dict, trial_id: str) -> dict:
        self._given[config_key(config)] = trial_id
        return config

    def _configurations(self) -> Iterator[dict]:
        """Every configuration of a finite space, in a fixed order (nothing where a parameter is a real range)."""
        values = {}
        for name, dist in self._space.items():
            if isinstance(dist, CategoricalDistribution):
                values[name] = list(dist.choices)
            elif isinstance(dist, IntDistribution) and not dist.log:
                values[name] = list(range(dist.low, dist.high + 1, dist.step))
            else:
                return
        for combo in itertools.product(*values.values()):
            yield dict(zip(values, combo))
