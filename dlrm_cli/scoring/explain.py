"""Why an item is recommended: the items the user rated in the training data that point to it most.

A two-stage checkpoint explains with its retrieval stage's item-item weights: EASE's ``W[i, j]`` (a user's
score of item j is the sum of ``W[i, j]`` over the items i they know) or PureSVD's ``V[i] . V[j]``. A one-stage
checkpoint uses the cosine similarity of the two items' id embeddings. Only items with a positive weight are
named, at most ``REASONS`` per item; a user with no training items gets none.

Legend: R items to explain, S the user's training items, D embedding dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from dlrm_cli.model.dlrm import table_name
from dlrm_cli.retrieval.generators import Ease

if TYPE_CHECKING:
    from dlrm_cli.scoring.recommending import Ranking
    from dlrm_cli.store.loading import LoadedModel

REASONS = 3


@dataclass(frozen=True)
class Because:
    """One of the user's training items behind a recommendation, and how much it weighs."""

    item: str
    title: str | None
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return {"item": self.item, **({"title": self.title} if self.title else {}), "weight": self.weight}


def explain_ranking(loaded: LoadedModel, ranking: Ranking, reasons: int = REASONS) -> Ranking:
    """``ranking`` with each item's ``because``: up to ``reasons`` of the user's training items, heaviest first."""
    items = loaded.catalog.items
    user_rows, _ = loaded.catalog.users.lookup([ranking.user])
    user_row = int(user_rows[0])
    seen = known_items(loaded).of(user_row) if user_row >= 0 else torch.empty(0, dtype=torch.long)
    rows, _ = items.lookup([entry.item for entry in ranking.items])
    weights = item_weights(loaded, rows, seen)  # R x S
    weights = weights.masked_fill(rows[:, None] == seen[None, :], 0.0)  # an item is no reason for itself
    explained = []
    for entry, row_weights in zip(ranking.items, weights, strict=True):
        values, order = torch.sort(row_weights, descending=True, stable=True)
        keep = values[:reasons] > 0
        chosen = seen[order[:reasons][keep]].tolist()
        because = [
            Because(str(items.keys[row]), (items.titles[row] or None) if items.titles else None, float(weight))
            for row, weight in zip(chosen, values[:reasons][keep].tolist(), strict=True)
        ]
        explained.append(replace(entry, because=because))
    return replace(ranking, items=explained)


def known_items(loaded: LoadedModel) -> Any:
    """The items each user is known to have rated, as the scores being explained saw them: a two-stage
    checkpoint's retrieval stage scores from the training and validation rows it was refitted on, a one-stage
    model's embeddings learnt from the training rows."""
    return loaded.stages.history if loaded.stages is not None else loaded.known.seen


def item_weights(loaded: LoadedModel, rows: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """R x S: how much each training item (``seen``, item rows) points to each of ``rows``; 0 for an item
    never seen in training, whose embedding is the shared out-of-vocabulary row."""
    if len(rows) == 0 or len(seen) == 0:
        return torch.zeros(len(rows), len(seen))
    stages = loaded.stages
    if stages is not None:
        generator = stages.generator
        if isinstance(generator, Ease):
            weights = generator.weights
            return weights[seen.to(weights.device)][:, rows.to(weights.device)].T.float().cpu()
        factors = generator.factors
        return (factors[rows.to(factors.device)] @ factors[seen.to(factors.device)].T).float().cpu()
    key = f"dlrm.sparse_arch.embedding_bag_collection.embedding_bags.{table_name('item_id')}.weight"
    table = loaded.model.state_dict()[key].detach().float().cpu()
    id_rows = loaded.catalog.items.id_rows
    wanted, known = id_rows[rows], id_rows[seen]
    similarity = (
        torch.nn.functional.normalize(table[wanted], dim=1) @ torch.nn.functional.normalize(table[known], dim=1).T
    )
    return similarity.masked_fill((wanted == 0)[:, None], 0.0)
