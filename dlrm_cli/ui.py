"""Terminal output: results on stdout, progress and status on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

SPARK = "▁▂▃▄▅▆▇█"


def out() -> Console:
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def stars(rating: float, low: float = 0.0, high: float = 5.0) -> str:
    """Five stars, filled in proportion to where the rating lies on its scale, to the nearest star."""
    filled = round((rating - low) / (high - low) * 5) if high > low else 0
    filled = min(max(filled, 0), 5)
    return "★" * filled + "☆" * (5 - filled)


def sparkline(values: list[float]) -> str:
    """A one-line chart of a series: lowest value ▁, highest █."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high - low < 1e-12:
        return SPARK[0] * len(values)
    return "".join(SPARK[round((v - low) / (high - low) * (len(SPARK) - 1))] for v in values)


def fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"
