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

import copy
import difflib
import functools
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

# Metric name -> direction in which it improves (None: reported for diagnosis, no direction implied).
KNOWN_METRICS: dict[str, Optional[str]] = {
    "val/pearson": "max", "val/spearman": "max", "val/mse": "min",
    "train/loss": "min", "train/root_mse": "min", "train/aux": "min", "train/aux_weighted": "min",
    "train/l2": "min", "train/pearson": "max",
    "val/pred_std": None, "val/std_ratio": None, "val/collapse": None, "init_diversity": None, "lr": None,
    "samples_per_s": None, "epoch_s": None, "epoch": None,
}
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
    line: int  # line of the key in the file

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

    def candidates(self) -> tuple:
        """Values checked against the config: every listed value, or both ends of a range."""
        return self.values


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
# YAML with line numbers


def _read_yaml(path: Path) -> tuple[Any, dict[tuple, int], list[tuple[tuple, str]]]:
    """The document, the line of every mapping key / list item, and duplicate keys (which YAML would drop)."""
    if not path.is_file():
        raise SearchSpaceError(f"{path}: no such search-space file")
    loader = yaml.SafeLoader(path.read_text())
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        lines: dict[tuple, int] = {}
        duplicates: list[tuple[tuple, str]] = []
        if node is not None:
            _record_lines(loader, node, (), lines, duplicates)
    except yaml.YAMLError as e:
        # Reported in the same FILE:LINE form as every other problem; nothing else can be checked without a document.
        raise SearchSpaceError(f"1 problem(s) in search space {path}:\n  {_yaml_error(path, e)}") from e
    finally:
        loader.dispose()
    return data, lines, duplicates


def _yaml_error(path: Path, e: yaml.YAMLError) -> str:
    if not isinstance(e, yaml.MarkedYAMLError) or e.problem_mark is None:
        return f"{path}:1: YAML error: {' '.join(str(e).split())}"
    mark = e.problem_mark
    where = ""
    if e.context and e.context_mark is not None:
        where = f" ({e.context} at line {e.context_mark.line + 1}, column {e.context_mark.column + 1})"
    return f"{path}:{mark.line + 1}: YAML syntax error at column {mark.column + 1}: {e.problem}{where}"


def _record_lines(loader: yaml.SafeLoader, node: yaml.Node, prefix: tuple, lines: dict[tuple, int],
                  duplicates: list[tuple[tuple, str]]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            path = prefix + (key,)
            line = key_node.start_mark.line + 1
            if key in seen:
                duplicates.append((path, f"key given twice (lines {seen[key]} and {line}); YAML would silently "
                                         "keep the last"))
            seen[key] = lines[path] = line
            _record_lines(loader, value_node, path, lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            _record_lines(loader, item, prefix + (i,), lines, duplicates)


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


# ----------------------------------------------------------------------------------------------------------
# Top-level fields and settings sections


def _text_field(report: _Report, data: dict, key: str) -> Optional[str]:
    value = data.get(key)
    if key in data and (not isinstance(value, str) or not value.strip()):
        report.add((key,), f"expected a non-empty string, got {value!r}")
        return None
    return value


def _name(report: _Report, data: dict) -> Optional[str]:
    name = _text_field(report, data, "name")
    if name is not None and not NAME_RE.fullmatch(name):
        report.add(("name",), f"{name!r}: use only letters, digits, '_', '.', '-' (it names the MLflow experiment)")
        return None
    return name


def _objective(report: _Report, data: dict) -> tuple[Optional[str], Optional[str]]:
    metric, mode = data.get("metric"), data.get("mode")
    if "metric" in data and not (isinstance(metric, str) and metric in KNOWN_METRICS):
        report.add(("metric",), f"{metric!r} is never reported by the trial function{_suggest(metric, KNOWN_METRICS)};"
                                f" known metrics: {', '.join(KNOWN_METRICS)}")
        metric = None
    if "mode" in data:
        mode = _one_of(report, ("mode",), mode, MODES)
    hint = KNOWN_METRICS.get(metric) if metric else None
    if hint and mode and mode != hint:
        better = "higher" if hint == "max" else "lower"
        report.add(("mode",), f"{metric} is better when {better} (mode {hint}); mode {mode} would select the "
                              "worst trials")
        mode = None
    return metric, mode


def _search_settings(report: _Report, data: dict, num_samples: Optional[int],
                     max_concurrent: Optional[int]) -> Optional[SearchSettings]:
    section = _section(report, data, "search")
    if section is None:
        return None
    p = ("search",)
    _check_keys(report, p, section, SEARCH_KEYS, SEARCH_REQUIRED)
    algorithm = _one_of(report, p + ("algorithm",), section.get("algorithm", "optuna"), ALGORITHMS)
    seed = section.get("seed")
    if "seed" in section and not _is_int(seed):
        report.add(p + ("seed",), f"expected an integer, got {seed!r}")
        seed = None
    counts = {}
    for key, cli_value in (("num_samples", num_samples), ("max_concurrent", max_concurrent)):
        if cli_value is not None:  # the command line replaces the file's value, under the same rule
            counts[key] = cli_value if _is_int(cli_value) and cli_value >= 1 else None
            if counts[key] is None:
                report.add_cli(f"--{key.replace('_', '-')}", f"expected an integer >= 1, got {cli_value!r}")
        elif key in section:
            counts[key] = _int_at_least(report, p + (key,), section[key], 1)
    values = (algorithm, seed, counts.get("num_samples"), counts.get("max_concurrent"))
    return SearchSettings(*values) if None not in values else None


def _scheduler_settings(report: _Report, data: dict, max_epochs: Optional[int]) -> Optional[SchedulerSettings]:
    section = _section(report, data, "scheduler")
    if section is None:
        return None
    p = ("scheduler",)
    kind = _one_of(report, p + ("type",), section.get("type", "asha"), SCHEDULERS)
    _check_scheduler_keys(report, section, kind)
    if kind is None:
        return None
    grace = _int_at_least(report, p + ("grace_period",), section["grace_period"], 1) \
        if "grace_period" in section else None
    if kind == "none":
        return SchedulerSettings("none")
    if kind == "median":
        needed = _int_at_least(report, p + ("min_samples_required",), section["min_samples_required"], 1) \
            if "min_samples_required" in section else None
        return SchedulerSettings("median", grace_period=grace, min_samples_required=needed) \
            if None not in (grace, needed) else None
    return _asha_settings(report, section, grace, max_epochs)


def _check_scheduler_keys(report: _Report, section: dict, kind: Optional[str]) -> None:
    p = ("scheduler",)
    every_key = sorted({k for keys in SCHEDULER_KEYS.values() for k in keys})
    for key in section:
        owners = [t for t, keys in SCHEDULER_KEYS.items() if key in keys]
        if not owners:
            report.add(p + (key,), f"unknown key{_suggest(key, every_key)}; valid keys: {', '.join(every_key)}")
        elif kind is not None and kind not in owners:
            report.add(p + (key,), f"only for type {' / '.join(owners)}, not {kind}")
    for key in SCHEDULER_REQUIRED.get(kind, ()):
        if key not in section:
            report.add(p, f"missing required key {key!r} (type {kind})")


def _asha_settings(report: _Report, section: dict, grace: Optional[int],
                   max_epochs: Optional[int]) -> Optional[SchedulerSettings]:
    p = ("scheduler",)
    factor = section.get("reduction_factor")
    if "reduction_factor" in section and not (_is_number(factor) and factor > 1):
        report.add(p + ("reduction_factor",), f"expected a number > 1, got {factor!r}")
        factor = None
    max_t = section.get("max_t", max_epochs)
    if "max_t" in section:
        max_t = _int_at_least(report, p + ("max_t",), max_t, 1)
        # One report per epoch = one training_iteration; a max_t below the epochs would cut every trial short of
        # its planned LR schedule, one above them is a rung no trial reaches.
        if max_t is not None and max_epochs is not None and max_t != max_epochs:
            report.add(p + ("max_t",), f"{max_t} != the largest train.epochs of any trial ({max_epochs}); "
                                       "leave max_t out to use train.epochs")
            max_t = None
    longest = max_epochs if max_epochs is not None else max_t  # what max_t must be, even where it was wrong
    if grace is not None and longest is not None and grace >= longest:
        report.add(p + ("grace_period",), f"{grace} >= max_t {longest}: ASHA could never stop a trial early "
                                          "(use type: none, or more train.epochs)")
        grace = None
    values = (grace, factor, max_t)
    return SchedulerSettings("asha", grace_period=grace, reduction_factor=factor, max_t=max_t) \
        if None not in values else None


def _resources(report: _Report, data: dict) -> Optional[Resources]:
    section = _section(report, data, "resources")
    if section is None:
        return None
    p = ("resources",)
    _check_keys(report, p, section, RESOURCE_KEYS, ("cpu",))
    cpu, gpu = section.get("cpu"), section.get("gpu", 0)
    if "cpu" in section and not (_is_number(cpu) and cpu > 0):
        report.add(p + ("cpu",), f"expected a number > 0, got {cpu!r}")
        cpu = None
    if not (_is_number(gpu) and gpu >= 0):
        report.add(p + ("gpu",), f"expected a number >= 0 (fractions share a GPU), got {gpu!r}")
        gpu = None
    return Resources(float(cpu), float(gpu)) if None not in (cpu, gpu) else None


# ----------------------------------------------------------------------------------------------------------
# Parameters (structure only; the config checks come after composing)


def _parameters(report: _Report, data: dict) -> list[Parameter]:
    section = _section(report, data, "parameters")
    if section is None:
        return []
    if not section:
        report.add(("parameters",), "no parameters to search")
    params = []
    for key, spec in section.items():
        param = _parameter(report, key, spec)
        if param is not None:
            params.append(param)
    return params


def _parameter(report: _Report, key: Any, spec: Any) -> Optional[Parameter]:
    path = ("parameters", key)
    if not isinstance(key, str) or not HYDRA_KEY_RE.fullmatch(key):
        report.add(path, "expected a dotted Hydra key such as model.norm_type")
        return None
    if not isinstance(spec, dict) or len(spec) != 1:
        report.add(path, f"expected exactly one distribution {{KIND: ARGS}} with KIND one of "
                         f"{', '.join(DISTRIBUTIONS)}; got {spec!r}")
        return None
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        report.add(path + (kind,), f"unknown distribution{_suggest(kind, DISTRIBUTIONS)}; "
                                   f"valid: {', '.join(DISTRIBUTIONS)}")
        return None
    values = _distribution_values(report, path + (kind,), kind, args)
    return Parameter(key, kind, values, report.line_of(path)) if values is not None else None


def _distribution_values(report: _Report, path: tuple, kind: str, args: Any) -> Optional[tuple]:
    if kind == "fixed":
        return (args,) if _value_ok(report, path, args) else None
    if kind in LIST_KINDS:
        return _list_values(report, path, args)
    return _range_values(report, path, kind, args)


def _value_ok(report: _Report, path: tuple, value: Any) -> bool:
    """Only values a Hydra override can carry exactly: null, bool, int, finite float, str and lists of them."""
    if isinstance(value, list):
        return all(_value_ok(report, path, v) for v in value)
    if value is None or isinstance(value, (bool, int, str)) or _is_number(value):
        return True
    report.add(path, f"unsupported value {value!r} ({type(value).__name__}): use null, booleans, numbers, "
                     "strings or lists of them")
    return False


def _list_values(report: _Report, path: tuple, args: Any) -> Optional[tuple]:
    if not isinstance(args, list) or not args:
        report.add(path, f"expected a non-empty list of values, got {args!r}")
        return None
    if not all([_value_ok(report, path + (i,), v) for i, v in enumerate(args)]):
        return None
    seen: dict[str, int] = {}
    for i, value in enumerate(args):
        text = format_override_value(value)  # identical override text = the same trial config
        if text in seen:
            report.add(path + (i,), f"value {value!r} repeats item {seen[text]}: it would be sampled twice as often")
            return None
        seen[text] = i
    return tuple(args)


def _range_values(report: _Report, path: tuple, kind: str, args: Any) -> Optional[tuple]:
    number_ok = _is_int if kind == "randint" else _is_number
    what = "integers" if kind == "randint" else "numbers"
    if not (isinstance(args, list) and len(args) == 2 and all(number_ok(v) for v in args)):
        report.add(path, f"expected [lo, hi] with two {what}, got {args!r}")
        return None
    lo, hi = args
    if lo >= hi:
        report.add(path, f"lo {lo!r} must be < hi {hi!r} (use fixed for a single value)")
        return None
    if kind == "loguniform" and lo <= 0:
        report.add(path, f"loguniform needs lo > 0, got {lo!r}")
        return None
    return (lo, hi)


def _check_algorithm(report: _Report, data: dict, params: list[Parameter]) -> None:
    section = data.get("search")
    algorithm = section.get("algorithm", "optuna") if isinstance(section, dict) else None
    if algorithm not in ALGORITHMS:
        return  # reported with the search settings
    allowed = ALLOWED_KINDS[algorithm]
    why = {"optuna": "TPE samples, it cannot enumerate a grid: use choice, or algorithm grid / random",
           "grid": "a grid search enumerates values: use grid or fixed, or algorithm optuna / random"}
    for p in params:
        if p.kind not in allowed:
            report.add(("parameters", p.key, p.kind), f"not allowed with algorithm {algorithm}: {why[algorithm]}")
    if params and all(p.kind == "fixed" for p in params):
        report.add(("parameters",), "every parameter is fixed: nothing to search")
    if algorithm == "grid" and params and not any(p.kind == "grid" for p in params):
        report.add(("search", "algorithm"), "grid search without any grid parameter")


# ----------------------------------------------------------------------------------------------------------
# Fixed overrides and the composed config


@dataclass(frozen=True)
class _Override:
    text: str
    key: str  # Hydra key or group it sets
    path: Optional[tuple]  # position in the file; None for the command line


def _parse_overrides(report: _Report, data: dict, extra: Sequence[str]) -> list[_Override]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    raw = data.get("overrides", [])
    if not isinstance(raw, list):
        report.add(("overrides",), f"expected a list of Hydra overrides (key=value), got {raw!r}")
        raw = []
    parser = OverridesParser.create()
    items = [(text, ("overrides", i)) for i, text in enumerate(raw)] + [(text, None) for text in extra]
    parsed = []
    for text, path in items:
        problem = None
        if not isinstance(text, str):
            problem = f"expected a Hydra override string such as train.epochs=4, got {text!r}"
        else:
            try:
                override = parser.parse_override(text)
            except HydraException as e:  # reported with its position; composing skips this override
                problem = f"not a valid Hydra override {text!r}: {_first_line(e)}"
            else:
                if override.is_sweep_override():
                    problem = f"{text!r} is a sweep: searched values belong under parameters"
                else:
                    parsed.append(_Override(text, override.key_or_group, path))
        if problem and path:
            report.add(path, problem)
        elif problem:
            report.add_cli(repr(text), problem)
    return parsed


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    cause = e.__cause__
    cause_text = str(cause).strip() if cause is not None else ""
    return text + (f" ({cause_text.splitlines()[0]})" if cause_text and cause_text != "None" else "")


def _compose(overrides: Sequence[str]) -> tuple[Optional[DictConfig], Optional[str]]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dcell_core.config import compose

    try:
        return compose(overrides), None
    except (HydraException, OmegaConfBaseException) as e:  # the caller reports the message at the override
        return None, _first_line(e)


def _compose_fixed(report: _Report, overrides: list[_Override]) -> DictConfig:
    """The base config with every fixed override that composes; each one that does not is reported."""
    cfg, _ = _compose([o.text for o in overrides])
    if cfg is not None:
        return cfg
    # Compose one override at a time to name each bad one, not only the first Hydra stops at.
    accepted: list[str] = []
    for o in overrides:
        _, error = _compose(accepted + [o.text])
        if error is None:
            accepted.append(o.text)
        elif o.path:
            report.add(o.path, f"{o.text!r} does not compose: {error}")
        else:
            report.add_cli(repr(o.text), f"does not compose: {error}")
    cfg, error = _compose(accepted)
    if cfg is None:  # each override composes alone, not all together: check the rest against the base config
        report.add(("overrides",), f"the overrides do not compose together: {error}")
        cfg, error = _compose([])
    if cfg is None:
        raise SearchSpaceError(f"{report.file}: the project's base config does not compose: {error}")
    return cfg


def _leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        child = node[key]
        full = f"{prefix}{key}"
        keys += _leaf_keys(child, full + ".") if isinstance(child, DictConfig) else [full]
    return keys


def _config_node(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_parameter_keys(report: _Report, cfg: DictConfig, params: list[Parameter],
                          overrides: list[_Override]) -> list[Parameter]:
    """Parameters whose key names one value of the composed config; the rest are reported, as are keys that are
    also fixed by an override (those are still returned, so that their values get checked too)."""
    fixed = {o.key: o for o in overrides}
    leaves = _leaf_keys(cfg)
    kept = []
    for p in params:
        found, node = _config_node(cfg, p.key)
        path = ("parameters", p.key)
        if not found:
            report.add(path, f"not a key of the composed config{_suggest(p.key, leaves)}")
        elif isinstance(node, DictConfig):
            report.add(path, f"names the config section {p.key}, not one value: search one of its keys, e.g. "
                             f"{next((k for k in leaves if k.startswith(p.key + '.')), p.key)}")
        elif p.key in fixed:
            where = f"overrides (line {report.line_of(fixed[p.key].path)})" if fixed[p.key].path else "the command line"
            report.add(path, f"also fixed by {fixed[p.key].text!r} in {where}: search it or fix it, not both")
            kept.append(p)
        else:
            kept.append(p)
    return kept


# ----------------------------------------------------------------------------------------------------------
# Values against the structured config


@functools.lru_cache(maxsize=1)
def _override_parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _set(node: DictConfig, key: str, value: Any) -> Optional[str]:
    """Set key's leaf in its (copied) section node as a trial's override would (Hydra's parse of the override
    text, then OmegaConf's typed merge); the type error, or None."""
    from omegaconf.errors import OmegaConfBaseException

    parsed = _override_parser().parse_override(f"{key}={format_override_value(value)}").value()
    try:
        OmegaConf.update(node, key.rpartition(".")[2], parsed, merge=True)
    except OmegaConfBaseException as e:  # a type mismatch: the caller reports it at the parameter
        return _first_line(e)
    return None


def _section_node(cfg: DictConfig, section: str) -> DictConfig:
    return OmegaConf.select(cfg, section) if section else cfg


def _validation_problem(node: DictConfig) -> Optional[str]:
    """The message of a section's own validate() (ModelConfig, TrainConfig, ...), or None when it passes."""
    if not isinstance(node, DictConfig) or not hasattr(OmegaConf.get_type(node), "validate"):
        return None
    try:
        OmegaConf.to_object(node).validate()
    except ValueError as e:  # validate() reports invalid values this way; the caller reports the message
        return " ".join(str(e).split())
    return None


def _structured_sections(node: DictConfig, prefix: str = "") -> list[str]:
    sections = [prefix.rstrip(".")] if hasattr(OmegaConf.get_type(node), "validate") else []
    for key in node:
        child = node[key]
        if isinstance(child, DictConfig):
            sections += _structured_sections(child, f"{prefix}{key}.")
    return sections


def _check_base_config(report: _Report, cfg: DictConfig, overrides: list[_Override]) -> set[str]:
    """Report config sections that fail validate() before any value is sampled; returns those sections."""
    broken = set()
    for section in _structured_sections(cfg):
        problem = _validation_problem(_section_node(cfg, section))
        if problem is None:
            continue
        broken.add(section)
        culprit = next((o for o in overrides if o.key == section or o.key.startswith(section + ".")
                        or section.startswith(o.key + ".")), None)
        message = f"the fixed config is invalid, every trial would fail: {problem}"
        if culprit is not None and culprit.path is None:
            report.add_cli(repr(culprit.text), message)
        else:
            report.add(culprit.path if culprit is not None else ("overrides",), message)
    return broken


def _check_values(report: _Report, cfg: DictConfig, params: list[Parameter], broken: set[str]) -> None:
    for p in params:
        section = p.key.rpartition(".")[0]
        siblings = [s for s in params if s is not p and s.key.rpartition(".")[0] == section]
        for i, value in enumerate(p.candidates()):
            problem = _value_problem(cfg, p, value, siblings, check_section=section not in broken)
            if problem:
                report.add(("parameters", p.key, p.kind) + ((i,) if p.kind in LIST_KINDS + RANGE_KINDS else ()),
                           f"value {value!r}: {problem}")


def _value_problem(cfg: DictConfig, p: Parameter, value: Any, siblings: list[Parameter],
                   check_section: bool) -> Optional[str]:
    # Copies of the section node only: cheap, and all that a section's validate() reads.
    node = copy.deepcopy(_section_node(cfg, p.key.rpartition(".")[0]))
    type_error = _set(node, p.key, value)
    if type_error is not None or not check_section:
        return type_error
    problem = _validation_problem(node)
    if problem is None or not siblings:
        return problem
    # A cross-field rule (attention heads must divide the token width) may fail at the base value of another
    # searched key and pass at one of its values: report only values that no combination makes valid.
    combos = itertools.product(*[s.candidates() for s in siblings])
    for combo in itertools.islice(combos, MAX_SIBLING_COMBINATIONS):
        trial = copy.deepcopy(node)
        if all(_set(trial, s.key, v) is None for s, v in zip(siblings, combo)) and _validation_problem(trial) is None:
            return None
    return f"{problem} (also with the other searched values of {p.key.rpartition('.')[0]})"


def _max_epochs(cfg: DictConfig, params: list[Parameter], data: dict) -> Optional[int]:
    """The largest train.epochs any trial gets (ASHA's max_t); None when that is unknown because the train.epochs
    parameter is invalid (already reported)."""
    searched = [p for p in params if p.key == "train.epochs"]
    listed = isinstance(data.get("parameters"), dict) and "train.epochs" in data["parameters"]
    if listed and not searched:
        return None
    values = list(searched[0].candidates()) if searched else [OmegaConf.select(cfg, "train.epochs")]
    return max(values) if all(_is_int(v) for v in values) else None


def _check_device(report: _Report, cfg: DictConfig, resources: Optional[Resources], params: list[Parameter]) -> None:
    device = OmegaConf.select(cfg, "train.device")
    if resources is None or any(p.key == "train.device" for p in params):
        return
    if device == "cpu" and resources.gpu > 0:
        report.add(("resources", "gpu"), f"{resources.gpu} GPU reserved per trial but train.device=cpu")
    if device == "cuda" and resources.gpu == 0:
        report.add(("resources", "gpu"), "train.device=cuda but no GPU reserved: Ray hides every GPU from the trial")


# ----------------------------------------------------------------------------------------------------------
# Public API


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


def make_search_alg(space: SearchSpace, max_concurrent: Optional[int] = None) -> Any:
    """The search algorithm, limited to max_concurrent trials (default: the file's search.max_concurrent).

    Do not also set TuneConfig.max_concurrent_trials, nor TuneConfig metric / mode (the searcher and scheduler
    carry them; Ray refuses both at once).
    """
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    s = space.search
    limit = s.max_concurrent if max_concurrent is None else max_concurrent
    if not _is_int(limit) or limit < 1:
        raise ValueError(f"max_concurrent must be an integer >= 1, got {limit!r}")
    if s.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        # No space here: OptunaSearch takes it from the Tuner's param_space (set_search_properties).
        return ConcurrencyLimiter(OptunaSearch(metric=space.metric, mode=space.mode, seed=s.seed),
                                  max_concurrent=limit)
    return BasicVariantGenerator(random_state=s.seed, max_concurrent=limit)


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


def trial_overrides(sampled: Mapping[str, Any]) -> list[str]:
    """Hydra override strings `key=value` for one sampled configuration (flat {Hydra key: value})."""
    return [f"{key}={format_override_value(value)}" for key, value in sampled.items()]


def format_override_value(value: Any) -> str:
    """A value in Hydra's override grammar that parses back to exactly the same Python value."""
    if isinstance(value, np.generic):
        value = value.item()  # numpy scalars from Tune's samplers; numpy 2 reprs them as np.float64(...)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # shortest text that round-trips to the same double
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(format_override_value(v) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} value {value!r} as a Hydra override")


def _quote(text: str) -> str:
    # Always quoted, so that 'true', 'null', '1' or 'a,b' stay strings. Inside a quoted Hydra value a quote is
    # escaped with a backslash, and backslashes are doubled only where they precede a quote (or the closing one).
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"
