"""Using a trained model: evaluate it on a split, rank items for a user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dlrm_cli.data import load_dataset
from dlrm_cli.data.catalog import Ratings
from dlrm_cli.errors import DataError, DlrmUsageError
from dlrm_cli.loading import LoadedModel
from dlrm_cli.metrics import error_metrics, score

SPLITS = ("test", "validation")


def evaluate(loaded: LoadedModel, split: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """MSE, RMSE and MAE of the model beside two references: always predicting the training mean, and
    (for synthetic data) the best any model can do.

    Without ``data``: on a split of the data the checkpoint was trained on. With ``data`` (a source
    description): on every rating in it, ids mapped through the checkpoint's vocabularies."""
    if split not in SPLITS:
        raise DlrmUsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    floor = None
    if data is None:
        dataset = load_dataset(loaded.meta["data"])
        ratings = dataset.split(split)
        if split in dataset.expected:
            floor = error_metrics(dataset.expected[split], ratings.rating)
        kind = loaded.meta["data"]["kind"]
    else:
        ratings = _ratings_from(loaded, data)
        split, kind = "all", data["kind"]
    predicted = score(loaded.model, loaded.catalog, ratings.user, ratings.item, loaded.device)
    mean = float(loaded.meta["global_mean"])
    return {
        "checkpoint": loaded.checkpoint.name,
        "data": kind,
        "split": split,
        "count": len(ratings),
        "model": error_metrics(predicted, ratings.rating),
        "global_mean_baseline": error_metrics(torch.full_like(ratings.rating, mean), ratings.rating),
        "noise_floor": floor,
    }


def _ratings_from(loaded: LoadedModel, data: dict[str, Any]) -> Ratings:
    """Every rating of a data source, its ids mapped to the checkpoint's rows (unknown ids: the neutral row)."""
    from dlrm_cli.data import load_raw

    raw, _ = load_raw(data)
    rows = []
    for table, ids in ((loaded.catalog.users, raw.user), (loaded.catalog.items, raw.item)):
        found = table.rows_for(ids)
        if (found < 0).any():
            if table.neutral_row is None:
                unknown = ids[found < 0][0]
                raise DataError(f"{data['path']} has {table.kind} id {unknown!r}, which this checkpoint does not know")
            found[found < 0] = table.neutral_row
        rows.append(torch.from_numpy(found))
    return Ratings(rows[0], rows[1], torch.from_numpy(raw.rating))


@dataclass
class RankedItem:
    item: str
    title: str | None
    rating: float
    unseen: bool


@dataclass
class Ranking:
    items: list[RankedItem]
    user_unseen: bool

    @property
    def unseen_items(self) -> list[str]:
        return [entry.item for entry in self.items if entry.unseen]


def rank_items(loaded: LoadedModel, user: str, items: list[str]) -> Ranking:
    """Score ``items`` for ``user``, best first.

    Ids never seen in training take the shared out-of-vocabulary row where the checkpoint has one
    (real data); for synthetic data, whose ids are a fixed range, an unknown id is a usage error."""
    catalog = loaded.catalog
    user_rows, unknown_users = catalog.users.lookup([user])
    if unknown_users and catalog.users.neutral_row is None:
        raise DlrmUsageError(f"unknown user id {user!r}: {_id_range(catalog.users)}")
    item_rows, unknown_items = catalog.items.lookup(items)
    if unknown_items and catalog.items.neutral_row is None:
        listed = ", ".join(repr(item) for item in unknown_items)
        plural = "s" if len(unknown_items) > 1 else ""
        raise DlrmUsageError(f"unknown item id{plural} {listed}: {_id_range(catalog.items)}")
    predicted = score(loaded.model, catalog, user_rows.expand(len(items)), item_rows, loaded.device)
    unseen = catalog.items.unseen_in_training(item_rows)
    titles = catalog.items.titles
    ranked = [
        RankedItem(item, (titles[int(row)] or None) if titles else None, float(value), bool(flag))
        for item, row, value, flag in zip(items, item_rows, predicted, unseen, strict=True)
    ]
    return Ranking(
        items=sorted(ranked, key=lambda entry: -entry.rating),
        user_unseen=bool(catalog.users.unseen_in_training(user_rows)[0]),
    )


def _id_range(table: Any) -> str:
    keys = table.keys
    if keys.dtype.kind in "iu" and len(keys) and int(keys[-1]) - int(keys[0]) + 1 == len(keys):
        return f"this checkpoint knows {table.kind} ids {int(keys[0])} to {int(keys[-1])}"
    return f"this checkpoint knows {len(keys):,} {table.kind} ids"
