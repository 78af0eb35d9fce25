"""Search algorithms whose concurrency limit lives in the search's state file, so a resume can change it.

Tune keeps the limit inside the algorithm object, which it pickles when the search starts and restores from its
own checkpoint on resume; these subclasses read the limit from the state file each time they are brought back.
"""
from __future__ import annotations

import json
from pathlib import Path

from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter


class _LimitFromState:
    _state_path: Path

    def _apply_limit(self) -> None:
        self.max_concurrent = int(json.loads(Path(self._state_path).read_text())["max_concurrent"])

    def __setstate__(self, state):  # from the Tuner's pickle
        self.__dict__.update(state)
        self._apply_limit()

    def set_state(self, state):  # from Tune's checkpoint of the search algorithm
        super().set_state(state)
        self._apply_limit()


class StateLimitedConcurrency(_LimitFromState, ConcurrencyLimiter):
    """ConcurrencyLimiter (around Optuna's TPE) with its limit from the state file."""

    def __init__(self, searcher, max_concurrent: int, state_path: Path):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self._state_path = Path(state_path)


class StateLimitedVariants(_LimitFromState, BasicVariantGenerator):
    """BasicVariantGenerator (grid and random searches) with its limit from the state file."""

    def __init__(self, random_state, max_concurrent: int, state_path: Path):
        super().__init__(random_state=random_state, max_concurrent=max_concurrent)
        self._state_path = Path(state_path)
