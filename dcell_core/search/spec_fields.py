"""Checks of a search-space file's own fields: name, metric and mode, search, scheduler, resources, parameters."""
from __future__ import annotations

from typing import Any, Optional

from dcell_core.search.overrides import format_override_value
from dcell_core.search.spec import (ALGORITHMS, ALLOWED_KINDS, DISTRIBUTIONS, HYDRA_KEY_RE, KNOWN_METRICS,
                                    LIST_KINDS, MODES, NAME_RE, RESOURCE_KEYS, SCHEDULER_KEYS, SCHEDULER_REQUIRED,
                                    SCHEDULERS, SEARCH_KEYS, SEARCH_REQUIRED, Parameter, Resources,
                                    SchedulerSettings, SearchSettings, _check_keys, _int_at_least, _is_int,
                                    _is_number, _one_of, _Report, _section, _suggest)

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
    return Parameter(key, kind, values) if values is not None else None


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
