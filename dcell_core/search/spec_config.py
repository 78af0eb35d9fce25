"""Checks of a search space against the composed DCell config: fixed overrides, searched keys, sampled values."""
from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from dcell_core.search.overrides import format_override_value
from dcell_core.search.spec import (ALLOWED_KINDS, LIST_KINDS, MAX_SIBLING_COMBINATIONS, RANGE_KINDS, Parameter,
                                    SearchSpaceError, _is_int, _Report, _suggest)
from dcell_core.search.spec_fields import AshaSettings, Resources, SearchSettings

# ----------------------------------------------------------------------------------------------------------
# Fixed overrides and the composed config


@dataclass(frozen=True)
class _Override:
    text: str
    key: str  # Hydra key or group it sets
    path: Optional[tuple]  # position in the file; None for the command line


def _parse_overrides(report: _Report, raw: list, extra: Sequence[str]) -> list[_Override]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

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
        for i, value in enumerate(p.values):
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
    combos = itertools.product(*[s.values for s in siblings])
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
    values = list(searched[0].values) if searched else [OmegaConf.select(cfg, "train.epochs")]
    return max(values) if all(_is_int(v) for v in values) else None


def _check_scheduler(report: _Report, scheduler: Any, max_epochs: Optional[int]) -> Any:
    """ASHA against the epochs of the trials; max_t filled in from them when it was left out."""
    if not isinstance(scheduler, AshaSettings):
        return scheduler
    p, max_t = ("scheduler",), scheduler.max_t
    # One report per epoch = one training_iteration; a max_t below the epochs would cut every trial short of its
    # planned LR schedule, one above them is a rung no trial reaches.
    if max_t is not None and max_epochs is not None and max_t != max_epochs:
        report.add(p + ("max_t",), f"{max_t} != the largest train.epochs of any trial ({max_epochs}); leave max_t "
                                   "out to use train.epochs")
    longest = max_epochs if max_epochs is not None else max_t  # what max_t must be, even where it was wrong
    if longest is not None and scheduler.grace_period >= longest:
        report.add(p + ("grace_period",), f"{scheduler.grace_period} >= max_t {longest}: ASHA could never stop a "
                                          "trial early (use type: none, or more train.epochs)")
    return scheduler.model_copy(update={"max_t": longest})


def _check_device(report: _Report, cfg: DictConfig, resources: Optional[Resources], params: list[Parameter]) -> None:
    device = OmegaConf.select(cfg, "train.device")
    if resources is None or any(p.key == "train.device" for p in params):
        return
    if device == "cpu" and resources.gpu > 0:
        report.add(("resources", "gpu"), f"{resources.gpu} GPU reserved per trial but train.device=cpu")
    if device == "cuda" and resources.gpu == 0:
        report.add(("resources", "gpu"), "train.device=cuda but no GPU reserved: Ray hides every GPU from the trial")


# ----------------------------------------------------------------------------------------------------------
# The design: which algorithm runs which configurations, each at most once


def _check_kinds(report: _Report, algorithm: Optional[str], params: list[Parameter], replicates: Optional[int]) -> None:
    for p in params:
        if algorithm in ALLOWED_KINDS and p.kind not in ALLOWED_KINDS[algorithm]:
            report.add(("parameters", p.key, p.kind), f"not allowed with algorithm {algorithm}: " + (
                "a grid enumerates values: use grid, choice, randint or fixed" if algorithm == "grid" else
                f"{'TPE' if algorithm == 'optuna' else 'random search'} samples, it cannot enumerate a grid: use "
                "choice, or algorithm grid"))
        if p.key == "train.seed" and p.kind != "fixed" and replicates is not None and replicates > 1:
            report.add(("parameters", p.key), f"searched together with replicates: {replicates}: the platform derives "
                                              "each replicate's seed (search train.seed only with replicates: 1)")
    if params and all(p.kind == "fixed" for p in params):
        report.add(("parameters",), "every parameter is fixed: nothing to search")


def distinct_configurations(params: Sequence[Parameter]) -> Optional[int]:
    """How many different configurations the parameters span; None when a range of numbers makes it unbounded."""
    n = 1
    for p in params:
        if p.kind in ("uniform", "loguniform"):
            return None
        n *= p.high - p.low + 1 if p.kind == "randint" else len(p.values)
    return n


def _as_grid(p: Parameter) -> Parameter:
    if p.kind == "fixed":
        return p
    return Parameter(p.key, "grid", tuple(range(p.low, p.high + 1)) if p.kind == "randint" else p.values)


def _design(report: _Report, search: SearchSettings, params: list[Parameter],
            num_samples_flag: bool) -> tuple[SearchSettings, list[Parameter], tuple[str, ...]]:
    """A grid (given, or chosen because num_samples asks for every configuration of a finite space) runs each
    configuration once, as Tune's grid_search repeated once; num_samples beyond the distinct configurations is
    refused. Returns the settings and parameters to run, and the console note of a chosen grid."""
    n, k = distinct_configurations(params), search.num_samples
    where = ("search", "num_samples")
    add = (lambda m: report.add_cli("--num-samples", f"search.num_samples {m}")) if num_samples_flag else \
        (lambda m: report.add(where, m))
    as_grid = search.model_copy(update={"algorithm": "grid", "num_samples": 1})
    if search.algorithm == "grid":
        if k not in (1, n):
            add(f"{k}: a grid runs each of its {n} distinct configurations once; give 1 or {n} (repeated seeds: "
                "replicates)")
        return as_grid, [_as_grid(p) for p in params], ()
    if n is None or k < n:
        return search, params, ()
    if k > n:
        add(f"{k} is more than the {n} distinct configurations of the parameters; a search runs each configuration "
            f"at most once (at most {n}, or repeated seeds: replicates)")
        return search, params, ()
    return as_grid, [_as_grid(p) for p in params], (
        f"num_samples {k} = every one of the {n} distinct configurations: run as a grid, each once (algorithm grid "
        f"instead of {search.algorithm})",)
