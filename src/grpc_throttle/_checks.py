"""Argument checks shared by the config objects: each names the bad field.

Every number accepted here is also usable: values are kept within
[:data:`SMALLEST`, :data:`LARGEST`] so that the arithmetic done with them later
(intervals ``1/rate``, powers, deadlines) neither overflows nor turns to NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

#: The smallest positive value accepted (a rate of one call in ~30 years).
SMALLEST = 1e-9
#: The largest finite value accepted (seconds: ~30,000 years; tokens; rates).
LARGEST = 1e12


def positive(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is in [SMALLEST, LARGEST] (or inf if allowed)."""
    number = _number(name, value)
    if math.isinf(number) and number > 0 and allow_inf:
        return number
    if math.isnan(number) or not SMALLEST <= number <= LARGEST:
        extra = " or inf" if allow_inf else ""
        raise ValueError(f"{name} must be a number in [{SMALLEST:g}, {LARGEST:g}]{extra}, got {value!r}")
    return number


def non_negative(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is in [0, LARGEST]."""
    number = _number(name, value)
    if math.isnan(number) or not 0 <= number <= LARGEST:
        raise ValueError(f"{name} must be a number in [0, {LARGEST:g}], got {value!r}")
    return number


def at_least(name: str, value: Any, minimum: float) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is in [minimum, LARGEST]."""
    number = _number(name, value)
    if math.isnan(number) or not minimum <= number <= LARGEST:
        raise ValueError(f"{name} must be a number in [{minimum:g}, {LARGEST:g}], got {value!r}")
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
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        raise ValueError(f"{name} must be a number a float can hold, got {value!r}") from None


def bounded(name: str, value: Any, low: float, high: float, *, low_inclusive: bool = False) -> float:
    """Return ``value`` as a float, or raise ValueError unless ``low < value <= high`` (or ``low <= value``)."""
    number = _number(name, value)
    above = number >= low if low_inclusive else number > low
    if math.isnan(number) or not above or number > high:
        opening = "[" if low_inclusive else "("
        raise ValueError(f"{name} must be a number in {opening}{low:g}, {high:g}], got {value!r}")
    return number


def metadata_pairs(metadata: Iterable[tuple[str, str | bytes]]) -> tuple[tuple[str, str | bytes], ...]:
    """Return ``metadata`` as a tuple of pairs, or raise ValueError (values are never shown: they may be secrets)."""
    if isinstance(metadata, (str, bytes)) or not isinstance(metadata, Iterable):
        raise ValueError(f"metadata must be a sequence of (key, value) pairs, got a {type(metadata).__name__}")
    pairs = tuple(metadata)
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError("metadata must be a sequence of (key, value) pairs")
        key, value = pair
        if not isinstance(key, str) or not key or key != key.lower():
            raise ValueError(f"metadata keys must be non-empty lowercase strings, got {key!r}")
        kind = bytes if key.endswith("-bin") else str
        if not isinstance(value, kind):
            raise ValueError(f"metadata value of {key!r} must be {kind.__name__}")
    return pairs
