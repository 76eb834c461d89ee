"""The options every method that recovers images with the recovery engine takes (the
RecoveryConfig fields), checked once."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ..distill.config import RecoveryConfig, recovery_config

RECOVERY_OPTIONS = tuple(f.name for f in dataclasses.fields(RecoveryConfig))


def recovery_options(recipe: str, options: Mapping[str, Any], seed: int = 0) -> RecoveryConfig:
    """The validated RecoveryConfig of ``recipe`` ("infer" or "sre2l": see recovery_config)
    with ``options`` on top (the request's ``seed`` unless they give one); an option it does
    not take is named."""
    return recovery_config(recipe, {"seed": seed, **options})
