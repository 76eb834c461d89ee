"""Checks of user-given values, each raising a ValueError that names the value: one
definition, no dependencies (the ops, models, configs and methods all use them)."""
from __future__ import annotations

from typing import Any, Iterable, Optional


def check_int(name: str, value: Any, minimum: Optional[int] = 1, none: Optional[str] = None) -> None:
    """ValueError naming ``name`` unless ``value`` is an int (a bool is not) >= ``minimum``
    (any int when ``minimum`` is None); with ``none``, None is allowed too and means that."""
    if value is None and none is not None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        what = "an integer" if minimum is None else "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}{f' or None ({none})' if none else ''}, got {value!r}")


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> None:
    """ValueError naming ``name`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
