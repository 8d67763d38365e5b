"""The one range check pages run on a visitor's numbers: a ValueError that names the setting, its value and the
rule (the prompting page's settings, the Inside page's positions and layers)."""

from __future__ import annotations

import math
from typing import Any


def check_range(name: str, value: Any, low: float, high: float, whole: bool = False) -> None:
    """ValueError naming `name`, its value and the rule, unless `low <= value <= high` (and whole, if asked)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}.")
    if whole and int(value) != value:
        raise ValueError(f"{name} must be a whole number, got {value}.")
