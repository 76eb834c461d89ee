"""Checks of user-given values, each raising a ValueError that names the value: one
definition, no dependencies (the ops, models, configs and methods all use them)."""
from __future__ import annotations

from typing import Any, Iterable, Optional

# the range of a 64-bit integer: what a tensor index, a size or a torch generator's seed holds
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_int(name: str, value: Any, minimum: Optional[int] = 1, none: Optional[str] = None) -> None:
    """ValueError naming ``name`` unless ``value`` is an int (a bool is not) >= ``minimum``
    (any int when ``minimum`` is None) that fits in int64; with ``none``, None is allowed too
    and means that."""
    if value is None and none is not None:
        return
    what = "an integer" if minimum is None else "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    or_none = f" or None ({none})" if none else ""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise ValueError(f"{name} must be {what}{or_none}, got {value!r}")
    if not INT64_MIN <= value <= INT64_MAX:
        bounds = f", at most {INT64_MAX}" if minimum is not None else f" from {INT64_MIN} to {INT64_MAX}"
        raise ValueError(f"{name} must be {what}{bounds} (a 64-bit integer){or_none}, got {value!r}")


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> None:
    """ValueError naming ``name`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
