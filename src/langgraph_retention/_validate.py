"""Argument checks shared by the public constructors: one wording for every bad value."""

from __future__ import annotations

from typing import Any

__all__ = ["check_int", "check_seconds"]


def check_int(name: str, value: Any, minimum: int) -> int:
    """`value` as an int of at least `minimum`; TypeError for a non-int, ValueError below."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_seconds(name: str, value: Any) -> float:
    """`value` as a non-negative number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return float(value)
