"""The structure of a search-space file as pydantic models, and pydantic's errors as `(key path, problem)` pairs.

Validation is strict: the validators below accept exactly what the format allows (no coercion; `true` is not 1).
"""
from __future__ import annotations

import functools
from typing import Annotated, Any, Callable, Iterable, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, PlainValidator, Tag,
                      TypeAdapter, ValidationError, model_validator)
from pydantic_core import PydanticCustomError

from dcell_core.search.overrides import format_override_value
from dcell_core.search.spec import (ALGORITHMS, DISTRIBUTIONS, HYDRA_KEY_RE, KNOWN_METRICS, MODES, NAME_RE,
                                    SCHEDULERS, _is_int, _is_number, _suggest)


def _fail(message: str) -> None:
    raise PydanticCustomError("dcell", "{message}", {"message": message})


def _rule(test: Callable[[Any], Any], problem: str | Callable[[Any], str], convert: Callable = lambda v: v) -> Any:
    """A validator: the value (converted) where test(value) holds, else the problem (a text: "expected TEXT, got
    VALUE"; or a function of the value)."""
    def validate(value: Any) -> Any:
        if not test(value):
            _fail(problem(value) if callable(problem) else f"expected {problem}, got {value!r}")
        return convert(value)
    return PlainValidator(validate)


def _one_of(allowed: Iterable[str]) -> Any:
    return _rule(lambda v: isinstance(v, str) and v in allowed,
                 lambda v: f"{v!r} is not one of {', '.join(allowed)}{_suggest(v, allowed)}")


def _value(value: Any) -> Any:
    """Only values a Hydra override can carry exactly: null, bool, int, finite float, str and lists of them."""
    if isinstance(value, list):
        return [_value(v) for v in value]
    if not (value is None or isinstance(value, (bool, int, str)) or _is_number(value)):
        _fail(f"unsupported value {value!r} ({type(value).__name__}): use null, booleans, numbers, strings or lists "
              "of them")
    return value


def _values(values: Any) -> tuple:
    if not isinstance(values, list) or not values:
        _fail(f"expected a non-empty list of values, got {values!r}")
    seen: dict[str, int] = {}
    for i, value in enumerate(_value(values)):
        text = format_override_value(value)  # identical override text = the same trial config
        if text in seen:
            _fail(f"value {value!r} (item {i}) repeats item {seen[text]}: it would be sampled twice as often")
        seen[text] = i
    return tuple(values)


def _range(integers: bool, positive: bool = False) -> Any:
    def validate(args: Any) -> tuple:
        ok = _is_int if integers else _is_number
        if not (isinstance(args, list) and len(args) == 2 and all(ok(v) for v in args)):
            _fail(f"expected [lo, hi] with two {'integers' if integers else 'numbers'}, got {args!r}")
        lo, hi = args
        if lo >= hi:
            _fail(f"lo {lo!r} must be < hi {hi!r} (use fixed for a single value)")
        if positive and lo <= 0:
            _fail(f"loguniform needs lo > 0, got {lo!r}")
        return (lo, hi)
    return PlainValidator(validate)


Text = Annotated[str, _rule(lambda v: isinstance(v, str) and v.strip(), "a non-empty string")]
Count = Annotated[int, _rule(lambda v: _is_int(v) and v >= 1, "an integer >= 1")]
Value = Annotated[Any, PlainValidator(_value)]
Values = Annotated[tuple, PlainValidator(_values)]
HydraKey = Annotated[str, _rule(lambda k: isinstance(k, str) and HYDRA_KEY_RE.fullmatch(k),
                                lambda k: "expected a dotted Hydra key such as model.norm_type")]
Metric = Annotated[str, _rule(lambda v: isinstance(v, str) and v in KNOWN_METRICS, lambda v: (
    f"{v!r} is never reported by the trial function{_suggest(v, KNOWN_METRICS)}; known metrics: "
    f"{', '.join(KNOWN_METRICS)}"))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchSettings(_Strict):
    algorithm: Annotated[str, _one_of(ALGORITHMS)] = "optuna"
    seed: Annotated[int, _rule(_is_int, "an integer")]
    num_samples: Count  # trials; for grid: 1 or the grid's size (each configuration once)
    max_concurrent: Count


class AshaSettings(_Strict):
    type: Literal["asha"] = "asha"
    grace_period: Count
    reduction_factor: Annotated[float, _rule(lambda v: _is_number(v) and v > 1, "a number > 1")]
    max_t: Optional[Count] = None  # the largest train.epochs of any trial (filled in when left out)


class MedianSettings(_Strict):
    type: Literal["median"]
    grace_period: Count
    min_samples_required: Count


class NoScheduler(_Strict):
    type: Literal["none"]


def _scheduler_type(section: Any) -> Any:
    kind = section.get("type", "asha") if isinstance(section, dict) else "asha"
    return kind if isinstance(kind, str) else repr(kind)


SchedulerSettings = Annotated[Union[Annotated[AshaSettings, Tag("asha")], Annotated[MedianSettings, Tag("median")],
                                    Annotated[NoScheduler, Tag("none")]], Discriminator(_scheduler_type)]
SCHEDULER_MODELS = {"asha": AshaSettings, "median": MedianSettings, "none": NoScheduler}


class Resources(_Strict):
    cpu: Annotated[float, _rule(lambda v: _is_number(v) and v > 0, "a number > 0", float)]
    gpu: Annotated[float, _rule(lambda v: _is_number(v) and v >= 0, "a number >= 0 (fractions share a GPU)",
                                float)] = 0.0


class Distribution(_Strict):
    """One parameter's distribution: exactly one of the fields, {KIND: ARGS}."""
    choice: Optional[Values] = None
    grid: Optional[Values] = None
    uniform: Annotated[Optional[tuple], _range(False)] = None
    loguniform: Annotated[Optional[tuple], _range(False, positive=True)] = None
    randint: Annotated[Optional[tuple], _range(True)] = None  # both bounds inclusive
    fixed: Value = None

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, spec: Any) -> Any:
        if not isinstance(spec, dict) or len(spec) != 1:
            _fail(f"expected exactly one distribution {{KIND: ARGS}} with KIND one of {', '.join(DISTRIBUTIONS)}; "
                  f"got {spec!r}")
        return spec

    @property
    def kind(self) -> str:
        (kind,) = self.model_fields_set
        return kind


class SearchFile(_Strict):
    name: Annotated[str, _rule(lambda v: isinstance(v, str) and NAME_RE.fullmatch(v), lambda v: (
        f"{v!r}: use only letters, digits, '_', '.', '-' (it names the MLflow experiment)"))]
    description: Text
    overrides: Annotated[list, _rule(lambda v: isinstance(v, list), "a list of Hydra overrides (key=value)")] = []
    metric: Metric
    mode: Annotated[str, _one_of(MODES)]
    replicates: Count = 1  # seeds trained per trial (the platform derives them)
    # replicates r > 0 also deal their own train / validation / test split (data.genotypes.split_seed)
    replicate_split: Annotated[bool, _rule(lambda v: isinstance(v, bool), "true or false")] = False
    search: SearchSettings
    scheduler: SchedulerSettings
    resources: Resources
    parameters: Annotated[dict[HydraKey, Distribution], AfterValidator(lambda d: d or _fail("no parameters to search"))]


# ----------------------------------------------------------------------------------------------------------
# Validation: every problem as (key path, message), and each part of the file that is valid on its own


def file_problems(data: dict) -> list[tuple[tuple, str]]:
    try:
        SearchFile.model_validate(data)
    except ValidationError as e:
        return [_problem(err, data) for err in e.errors()]
    return []


def valid_part(data: dict, key: str) -> Any:
    """The validated value of one top-level field (a dict of Distribution for `parameters`: each valid one), or None
    where it is absent or invalid (file_problems reports why)."""
    if key not in data:
        return SearchFile.model_fields[key].default if key in ("overrides", "replicates", "replicate_split") else None
    if key == "parameters":
        if not isinstance(data[key], dict):
            return None
        params = {k: _validated(Distribution, spec) for k, spec in data[key].items() if _validated(HydraKey, k)}
        return {k: d for k, d in params.items() if d is not None}
    value, field = data[key], SearchFile.model_fields[key]
    model = SCHEDULER_MODELS.get(_scheduler_type(value)) if key == "scheduler" else _MODELS.get((key,))
    if model is not None and isinstance(value, dict):  # unknown keys are reported; the rest can still be checked
        value = {k: v for k, v in value.items() if k in model.model_fields}
    return _validated(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation, value)


def _validated(annotation: Any, value: Any) -> Any:
    try:
        return _adapter(annotation).validate_python(value)
    except ValidationError:  # reported by file_problems, with its path
        return None


@functools.lru_cache(maxsize=None)
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation)


_MODELS = {(): SearchFile, ("search",): SearchSettings, ("resources",): Resources}


def _problem(err: dict, data: dict) -> tuple[tuple, str]:
    loc = tuple(part for part in err["loc"] if part != "[key]")
    if loc[:1] == ("scheduler",) and len(loc) > 1:
        loc = loc[:1] + loc[2:]  # drop the union's tag (the scheduler type)
    kind, value = err["type"], err["input"]
    if kind == "missing":
        return loc[:-1], f"missing required key {loc[-1]!r}"
    if kind == "extra_forbidden":
        return loc, _unknown_key(loc, data)
    if kind in ("model_type", "dict_type"):
        return loc, f"expected a mapping, got {type(value).__name__} {value!r}"
    if kind == "union_tag_invalid":
        return loc + ("type",), (f"{err['ctx']['tag']!r} is not one of {', '.join(SCHEDULERS)}"
                                 f"{_suggest(err['ctx']['tag'], SCHEDULERS)}")
    return loc, err["msg"]  # our own validators' messages ("dcell"), or pydantic's words for anything else


def _unknown_key(loc: tuple, data: dict) -> str:
    parent, key = loc[:-1], loc[-1]
    if parent == ("scheduler",):
        kind = data["scheduler"].get("type", "asha")
        owners = [t for t, model in SCHEDULER_MODELS.items() if key in model.model_fields]
        if owners:
            return f"only for type {' / '.join(owners)}, not {kind}"
        valid: tuple = tuple(sorted({k for model in SCHEDULER_MODELS.values() for k in model.model_fields}))
    elif len(parent) == 2 and parent[0] == "parameters":
        return f"unknown distribution{_suggest(key, DISTRIBUTIONS)}; valid: {', '.join(DISTRIBUTIONS)}"
    else:
        valid = tuple(_MODELS[parent].model_fields)
    return f"unknown key{_suggest(key, valid)}; valid keys: {', '.join(valid)}"
