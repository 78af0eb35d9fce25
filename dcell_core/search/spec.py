"""Search-space data: the format's constants, the parsed SearchSpace, and problem collection with line numbers.

The file format is described in dcell_core.search.space (the module users import).
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from dcell_core.train.metrics import TRAIN_METRICS

if TYPE_CHECKING:
    from dcell_core.search.spec_fields import Resources, SchedulerSettings, SearchSettings

# What the trial function reports each epoch, and the direction in which each improves: owned by the training
# loop's registry (dcell_core.train.metrics.TRAIN_METRICS).
KNOWN_METRICS: dict[str, Optional[str]] = TRAIN_METRICS
MODES = ("max", "min")
ALGORITHMS = ("optuna", "random", "grid")
SCHEDULERS = ("asha", "median", "none")
RANGE_KINDS = ("uniform", "loguniform", "randint")
LIST_KINDS = ("choice", "grid")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "grid", "fixed")
SAMPLED_KINDS = ("choice", "uniform", "loguniform", "randint", "fixed")
ALLOWED_KINDS = {"optuna": SAMPLED_KINDS, "random": SAMPLED_KINDS, "grid": ("grid", "choice", "randint", "fixed")}
FINITE_KINDS = ("choice", "grid", "randint", "fixed")

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
    replicates: int = 1  # seeds trained per trial (derived by the platform)
    replicate_split: bool = False  # replicates r > 0 also deal their own data split
    notes: tuple[str, ...] = ()  # what the loader decided for the user (e.g. an exact grid): one console line each


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


# ----------------------------------------------------------------------------------------------------------
# Scalar checks (bool is not a number here: `true` for an integer setting is a mistake, not 1)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
