"""Checks of numeric settings, shared by every entry point so that all refuse the same values with the
same words (a bool is not an integer here, though Python says it is)."""

from __future__ import annotations

import math
import numbers


def is_int(x: object) -> bool:
    """An integer (Python's or numpy's), and not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_int(name: str, value: object, least: int = 1, bound: str | None = None, note: str = "") -> int:
    """`value` as a Python int if it is an integer >= `least` (numpy's too), else a ValueError naming
    `name` (`bound`: how to name the least value, e.g. "gamma (3)"; `note`: what else is accepted)."""
    if not is_int(value) or value < least:
        raise ValueError(f"{name} must be an integer >= {bound or least}{note}, got {value!r}.")
    return int(value)


def is_finite_number(x: object) -> bool:
    """A finite real number (Python's or numpy's), and not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def check_positive(name: str, value: object) -> float:
    """`value` as a float if it is a finite number > 0 (a learning rate, say), else a ValueError naming `name`."""
    if not (is_finite_number(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)
