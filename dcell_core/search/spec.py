"""Search-space data: the format's constants, the parsed SearchSpace, and problem collection with line numbers.

The file format is described in dcell_core.search.space (the module users import).
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from dcell_core.train.metrics import TRAIN_METRICS

# What the trial function reports each epoch, and the direction in which each improves: owned by the training
# loop's registry (dcell_core.train.metrics.TRAIN_METRICS).
KNOWN_METRICS: dict[str, Optional[str]] = TRAIN_METRICS
MODES = ("max", "min")
ALGORITHMS = ("optuna", "random", "grid")
SCHEDULERS = ("asha", "median", "none")
RANGE_KINDS = ("uniform", "loguniform", "randint")
LIST_KINDS = ("choice", "grid")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "grid", "fixed")
ALLOWED_KINDS = {"optuna": ("choice", "uniform", "loguniform", "randint", "fixed"),
                 "random": DISTRIBUTIONS, "grid": ("grid", "fixed")}

TOP_KEYS = ("name", "description", "overrides", "metric", "mode", "search", "scheduler", "resources", "parameters")
TOP_REQUIRED = ("name", "description", "metric", "mode", "search", "scheduler", "resources", "parameters")
SEARCH_KEYS = ("algorithm", "seed", "num_samples", "max_concurrent")
SEARCH_REQUIRED = ("seed", "num_samples", "max_concurrent")
SCHEDULER_KEYS = {"asha": ("type", "grace_period", "reduction_factor", "max_t"),
                  "median": ("type", "grace_period", "min_samples_required"), "none": ("type",)}
SCHEDULER_REQUIRED = {"asha": ("grace_period", "reduction_factor"),
                      "median": ("grace_period", "min_samples_required"), "none": ()}
RESOURCE_KEYS = ("cpu", "gpu")

NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
HYDRA_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# Other searched keys of one config section tried together when a value fails that section's validate():
# enough for pairs of small choices, bounded so a large space cannot make loading slow.
MAX_SIBLING_COMBINATIONS = 256


class SearchSpaceError(ValueError):
    """Every problem of one search-space file, one `FILE:LINE: key.path: problem` line each."""


@dataclass(frozen=True)
class Parameter:
    key: str  # Hydra key of the composed config, e.g. "model.norm_type"
    kind: str  # one of DISTRIBUTIONS
    values: tuple  # choice / grid: the values; uniform / loguniform / randint: (lo, hi); fixed: (value,)

    @property
    def low(self) -> Any:
        self._require_range()
        return self.values[0]

    @property
    def high(self) -> Any:
        """Upper bound as written; inclusive for randint."""
        self._require_range()
        return self.values[1]

    def _require_range(self) -> None:
        if self.kind not in RANGE_KINDS:
            raise AttributeError(f"{self.key}: a {self.kind} parameter has no bounds")


@dataclass(frozen=True)
class SearchSettings:
    algorithm: str  # optuna | random | grid
    seed: int
    num_samples: int  # trials; for grid, repeats of the grid
    max_concurrent: int


@dataclass(frozen=True)
class SchedulerSettings:
    type: str  # asha | median | none
    grace_period: Optional[int] = None  # asha, median
    reduction_factor: Optional[float] = None  # asha
    max_t: Optional[int] = None  # asha: the largest train.epochs of any trial
    min_samples_required: Optional[int] = None  # median


@dataclass(frozen=True)
class Resources:
    cpu: float
    gpu: float


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    name: str
    description: str
    overrides: tuple[str, ...]  # the file's fixed overrides, then the command line's: what every trial composes
    metric: str
    mode: str
    search: SearchSettings
    scheduler: SchedulerSettings
    resources: Resources
    parameters: tuple[Parameter, ...]


# ----------------------------------------------------------------------------------------------------------
# Problem collection with line numbers


@dataclass
class _Report:
    file: str
    lines: dict[tuple, int]  # key path -> 1-based line of the key (or list item) in the file
    items: list[tuple[int, int, str]] = field(default_factory=list)  # (line, order, message)

    def line_of(self, path: tuple) -> int:
        # A missing key is reported at its nearest present parent; the top level at line 1.
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def add(self, path: tuple, message: str) -> None:
        line = self.line_of(path)
        self.items.append((line, len(self.items), f"{self.file}:{line}: {_dotted(path)}: {message}"))

    def add_cli(self, what: str, message: str) -> None:
        self.items.append((0, len(self.items), f"{self.file}: command line: {what}: {message}"))

    def raise_if_any(self) -> None:
        if self.items:
            lines = [m for _, _, m in sorted(self.items)]
            raise SearchSpaceError(f"{len(lines)} problem(s) in search space {self.file}:\n  " + "\n  ".join(lines))


def _dotted(path: tuple) -> str:
    if not path:
        return "(top level)"
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _suggest(word: Any, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(report: _Report, path: tuple, mapping: dict, allowed: Sequence[str],
                required: Sequence[str]) -> None:
    for key in mapping:
        if key not in allowed:
            report.add(path + (key,), f"unknown key{_suggest(key, allowed)}; valid keys: {', '.join(allowed)}")
    for key in required:
        if key not in mapping:
            report.add(path, f"missing required key {key!r}")


# ----------------------------------------------------------------------------------------------------------
# Scalar checks (bool is not a number here: `true` for an integer setting is a mistake, not 1)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _int_at_least(report: _Report, path: tuple, value: Any, minimum: int) -> Optional[int]:
    if not _is_int(value) or value < minimum:
        report.add(path, f"expected an integer >= {minimum}, got {value!r}")
        return None
    return value


def _one_of(report: _Report, path: tuple, value: Any, allowed: Sequence[str]) -> Optional[str]:
    if value not in allowed:
        report.add(path, f"{value!r} is not one of {', '.join(allowed)}{_suggest(value, allowed)}")
        return None
    return value


def _section(report: _Report, data: dict, key: str) -> Optional[dict]:
    value = data.get(key)
    if key in data and not isinstance(value, dict):
        report.add((key,), f"expected a mapping, got {type(value).__name__} {value!r}")
        return None
    return value
