"""The Python API: a checkpoint loaded once, answering many questions.

Example::

    from dlrm_cli import load

    model = load("ml1m")                       # a checkpoint name, "latest" or "best"
    model.predict(42, [101, 102]).items[0]     # RankedItem(item='102', title=..., rating=4.31, unseen=False)
    model.recommend(42, top=10).ranking.items  # the 10 best items the user has not rated
    model.score([42, 42], [101, 102])          # tensor([3.97, 4.31]): ratings in the order asked

The command line and ``dlrm serve`` answer through the same functions (``dlrm_cli.scoring.recommending``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from dlrm_cli.config import DEFAULT_STORE, STORE_ENV
from dlrm_cli.scoring.metrics import score
from dlrm_cli.scoring.recommending import (
    Query,
    Ranking,
    Recommendation,
    SeenItems,
    answer,
    entity_rows,
    predict_query,
    rank_items,
    recommend,
    recommend_query,
)
from dlrm_cli.store.loading import LoadedModel, open_model

Id = int | str


def load(checkpoint: str = "latest", store: str | Path | None = None, device: str = "cpu") -> Model:
    """The checkpoint ``checkpoint`` of the store at ``store`` (default: $DLRM_CHECKPOINT_DIR, else
    ./checkpoints), ready to answer on ``device`` (``cpu``, ``cuda`` or ``auto``).

    Raises ``dlrm_cli.errors.DlrmError`` (a one-line message) for a missing or corrupt checkpoint."""
    store = store if store is not None else os.environ.get(STORE_ENV, str(DEFAULT_STORE))
    return Model(open_model(store, checkpoint, device))


class Model:
    """A loaded checkpoint. Ids may be given as ints or strings, as they appear in the data."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.loaded_at = time.time()

    @property
    def name(self) -> str:
        return self.loaded.checkpoint.name

    @property
    def meta(self) -> dict[str, Any]:
        """The checkpoint's record: its run settings, metrics and history."""
        return self.loaded.meta

    @cached_property
    def seen(self) -> SeenItems:
        """The items each user rated in training, read from the training data on first use."""
        return SeenItems(self.loaded)

    def predict_query(self, user: Id, items: Sequence[Id]) -> Query:
        """``predict``'s question, checked (unknown ids: see ``recommending.predict_query``) but not yet scored."""
        return predict_query(self.loaded, str(user), [str(item) for item in items])

    def _seen(self, exclude_seen: bool) -> SeenItems | None:
        """The training data's seen items, where recommending needs them (a two-stage checkpoint keeps its own)."""
        return self.seen if exclude_seen and self.loaded.stages is None else None

    def recommend_query(self, user: Id, top: int = 10, exclude_seen: bool = True, retrieve: int | None = None) -> Query:
        """``recommend``'s question, checked but not yet scored (a two-stage checkpoint retrieves and ranks here)."""
        return recommend_query(self.loaded, str(user), top, exclude_seen, self._seen(exclude_seen), retrieve)

    def answer(self, queries: list[Query]) -> list[Ranking]:
        """Rankings for many queries, scored together in one pass of the model."""
        return answer(self.loaded, queries)

    def predict(self, user: Id, items: Sequence[Id]) -> Ranking:
        """``items`` ranked best first by ``user``'s predicted rating, as ``dlrm predict`` shows them."""
        return rank_items(self.loaded, str(user), [str(item) for item in items])

    def recommend(
        self, user: Id, top: int = 10, exclude_seen: bool = True, retrieve: int | None = None
    ) -> Recommendation:
        """The ``top`` items of the catalogue for ``user``, as ``dlrm recommend`` shows them (a two-stage
        checkpoint: ``retrieve`` candidates, default as trained, ordered by its ranker)."""
        return recommend(self.loaded, str(user), top, exclude_seen, self._seen(exclude_seen), retrieve)

    def score(self, users: Sequence[Id], items: Sequence[Id]) -> torch.Tensor:
        """Predicted ratings of (users[i], items[i]) pairs, in the order given (unknown ids: as ``predict``)."""
        if len(users) != len(items):
            raise ValueError(f"{len(users)} users and {len(items)} items: give one user per item")
        catalog = self.loaded.catalog
        user_rows = entity_rows(catalog.users, [str(user) for user in users])
        item_rows = entity_rows(catalog.items, [str(item) for item in items])
        return score(self.loaded.model, catalog, user_rows, item_rows, self.loaded.device)
