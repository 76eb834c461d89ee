"""YAML configuration with command-line overrides.

A config file is a flat mapping of option names (as the command's ``--long-options``
spell them, with ``_`` or ``-``) to values; command-line options given explicitly win.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Iterable, Optional

import yaml


def load_yaml(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {path!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def merge(args: argparse.Namespace, config_path: Optional[str], allowed: Iterable[str]) -> Dict[str, Any]:
    """Values from ``config_path`` overridden by the options set on the command line.

    Options the user did not give are ``None`` in ``args`` (parsers use default=None and
    the command applies its own defaults afterwards)."""
    allowed = set(allowed)
    merged: Dict[str, Any] = {}
    if config_path:
        from_file = load_yaml(config_path)
        unknown = sorted(set(from_file) - allowed)
        if unknown:
            raise ValueError(f"config file {config_path!r}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        merged.update(from_file)
    for key in allowed:
        value = getattr(args, key, None)
        if value is not None:
            merged[key] = value
    return merged


def check_positive_ints(config: Any, names: Iterable[str]) -> None:
    """ValueError naming the first option of ``config`` that is not a positive integer."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
