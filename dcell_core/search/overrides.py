"""Sampled values as Hydra override text that parses back to exactly the same values."""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
from omegaconf import ListConfig


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
