"""The value checks every hyperparameter uses: each failure is a ``ConfigError`` naming the key."""

from __future__ import annotations

from typing import Any

from ple_search.core.errors import ConfigError


def _invalid(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"hyperparameter '{key}' = {value!r} is invalid: {allowed}")


def check_int(key: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int >= ``minimum`` or raise a ``ConfigError`` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _invalid(key, value, f"must be an integer >= {minimum}")
    return value


def check_widths(key: str, value: Any, allow_empty: bool) -> tuple[int, ...]:
    """Return layer widths as a tuple of positive ints or raise a ``ConfigError`` naming ``key``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise _invalid(key, value, "must be a list of positive integers")
    if not value and not allow_empty:
        raise _invalid(key, value, "must be a non-empty list of positive integers")
    for width in value:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise _invalid(key, value, "every width must be a positive integer")
    return tuple(value)


def _number(key: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"hyperparameter '{key}' = {value!r} is invalid: must be a number {'>= 0' if allow_zero else '> 0'}")
    return float(value)
