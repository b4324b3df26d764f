"""Terminal output: results on stdout, progress and status on stderr."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from rich.console import Console

SPARK = "▁▂▃▄▅▆▇█"


def out() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def err() -> Console:
    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def stars(rating: float, high: float = 5.0) -> str:
    """Five stars, filled in proportion to the rating's share of the top of the scale, to the nearest star
    (halves round up: 3.5 of 5 is ★★★★☆)."""
    filled = math.floor(rating / high * 5 + 0.5) if high > 0 else 0
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


def history_table(history: list[dict[str, Any]], title: str) -> Any:
    """One row per epoch: train loss, validation RMSE and MAE, learning rate, throughput."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("epoch", "train loss", "val RMSE", "val MAE", "lr", "samples/s"):
        table.add_column(column, justify="right")
    for record in history:
        table.add_row(
            str(record["epoch"]),
            fmt(record["train_loss"]),
            fmt(record["val_rmse"]),
            fmt(record["val_mae"]),
            f"{record['lr']:.2e}",
            f"{record['samples_per_s']:,.0f}",
        )
    return table
