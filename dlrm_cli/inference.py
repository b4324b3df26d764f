"""Using a trained model: evaluate it on a split, rank items for a user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dlrm_cli.data import load_dataset
from dlrm_cli.errors import DlrmUsageError
from dlrm_cli.loading import LoadedModel
from dlrm_cli.metrics import error_metrics, score

SPLITS = ("test", "validation")


def evaluate(loaded: LoadedModel, split: str) -> dict[str, Any]:
    """MSE, RMSE and MAE of the model on a split of the data it was trained on, beside two references:
    always predicting the training mean, and (for synthetic data) the best any model can do."""
    if split not in SPLITS:
        raise DlrmUsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    dataset = load_dataset(loaded.meta["data"])
    ratings = dataset.split(split)
    predicted = score(loaded.model, loaded.catalog, ratings.user, ratings.item, loaded.device)
    mean = float(loaded.meta["global_mean"])
    floor = None
    if split in dataset.expected:
        floor = error_metrics(dataset.expected[split], ratings.rating)
    return {
        "checkpoint": loaded.checkpoint.name,
        "data": loaded.meta["data"]["kind"],
        "split": split,
        "count": len(ratings),
        "model": error_metrics(predicted, ratings.rating),
        "global_mean_baseline": error_metrics(torch.full_like(ratings.rating, mean), ratings.rating),
        "noise_floor": floor,
    }


@dataclass
class RankedItem:
    item: str
    title: str | None
    rating: float
    unseen: bool


def rank_items(loaded: LoadedModel, user: str, items: list[str]) -> list[RankedItem]:
    """Score ``items`` for ``user`` and return them best first."""
    catalog = loaded.catalog
    user_rows, unknown_users = catalog.users.lookup([user])
    if unknown_users:
        raise DlrmUsageError(f"unknown user id {user!r}: {_id_range(catalog.users)}")
    item_rows, unknown_items = catalog.items.lookup(items)
    if unknown_items:
        listed = ", ".join(repr(item) for item in unknown_items)
        raise DlrmUsageError(
            f"unknown item id{'s' if len(unknown_items) > 1 else ''} {listed}: {_id_range(catalog.items)}"
        )
    predicted = score(loaded.model, catalog, user_rows.expand(len(items)), item_rows, loaded.device)
    unseen = catalog.items.unseen_in_training(item_rows)
    titles = catalog.items.titles
    ranked = [
        RankedItem(item, titles[int(row)] if titles else None, float(value), bool(flag))
        for item, row, value, flag in zip(items, item_rows, predicted, unseen, strict=True)
    ]
    return sorted(ranked, key=lambda entry: -entry.rating)


def _id_range(table: Any) -> str:
    keys = table.keys
    if keys.dtype.kind in "iu" and len(keys) and int(keys[-1]) - int(keys[0]) + 1 == len(keys):
        return f"this checkpoint knows {table.kind} ids {int(keys[0])} to {int(keys[-1])}"
    return f"this checkpoint knows {len(keys):,} {table.kind} ids"
