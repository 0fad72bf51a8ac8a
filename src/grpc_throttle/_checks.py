"""Argument checks shared by the config objects: each names the bad field."""

from __future__ import annotations

import math
from typing import Any


def positive(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is finite and > 0."""
    number = _number(name, value)
    if math.isnan(number) or number <= 0 or (math.isinf(number) and not allow_inf):
        raise ValueError(f"{name} must be a {'' if allow_inf else 'finite '}number > 0, got {value!r}")
    return number


def non_negative(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is finite and >= 0."""
    number = _number(name, value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def at_least(name: str, value: Any, minimum: float) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is finite and >= minimum."""
    number = _number(name, value)
    if not math.isfinite(number) or number < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return number


def whole(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int, or raise ValueError unless it is an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)
