"""Answers for users: a list of items ranked for one user (``predict``), the top of the catalogue for one
user (``recommend``) or for many (``recommend --all-users``), scored in large vectorised batches.

Each function returns a result object; its ``to_dict()`` is the command's ``--json`` document.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrm_cli.data.catalog import EntityTable
from dlrm_cli.data.context import PAD, ContextRows
from dlrm_cli.errors import DlrmError, DlrmUsageError
from dlrm_cli.scoring.explain import Because, explain_ranking
from dlrm_cli.scoring.metrics import (
    score,
    score_grid,
    score_heads,
)
from dlrm_cli.store.loading import LoadedModel


def stars(rating: float, high: float = 5.0) -> str:
    """Five stars, filled in proportion to the rating's share of the top of the scale, to the nearest star
    (halves round up: 3.5 of 5 is ★★★★☆)."""
    filled = math.floor(rating / high * 5 + 0.5) if high > 0 else 0
    filled = min(max(filled, 0), 5)
    return "★" * filled + "☆" * (5 - filled)


@dataclass(frozen=True)
class RankedItem:
    item: str
    title: str | None
    rating: float
    unseen: bool
    score: float | None = None  # a two-headed model's recommendations: the ranking head's probability
    features: dict[str, float | str] | None = None  # the item's raw side values, where the data has them
    because: list[Because] | None = None  # recommend --explain: the user's training items behind it

    @property
    def label(self) -> str:
        """The title and the side values, as tables show them: ``Dune (genre sci-fi, price 9.5)``."""
        if not self.features:
            return self.title or ""
        values = ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                           for name, value in self.features.items())  # fmt: skip
        return f"{self.title or f'item {self.item}'} ({values})"


@dataclass(frozen=True)
class Ranking:
    """Items for one user, best first, as one checkpoint scores them."""

    checkpoint: str
    user: str
    rating_max: float
    items: list[RankedItem]
    user_unseen: bool
    # ``rating``: the rating head's stars; ``score``: a model without one (--objective ranking) gives the
    # probability that the user picks the item, against as many random items as it trained with.
    scored_as: str = "rating"
    context: Context | None = None  # the context it was scored in, for a model with context columns

    @property
    def unseen_items(self) -> list[str]:
        return [entry.item for entry in self.items if entry.unseen]

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "user": self.user,
            **extra,
            "recommended": self.items[0].item if self.items else None,
            "user_unseen_in_training": self.user_unseen,
            **(self.context.to_dict() if self.context is not None else {}),
            "items": [
                {
                    "rank": rank,
                    "item": entry.item,
                    "title": entry.title,
                    **({"features": entry.features} if entry.features else {}),
                    **(
                        {"rating": entry.rating, "stars": stars(entry.rating, self.rating_max)}
                        if self.scored_as == "rating"
                        else {"score": entry.rating}
                    ),
                    **({"score": entry.score} if entry.score is not None else {}),
                    "unseen_in_training": entry.unseen,
                    **(
                        {"because": [reason.to_dict() for reason in entry.because]} if entry.because is not None else {}
                    ),
                }
                for rank, entry in enumerate(self.items, start=1)
            ],
        }


@dataclass(frozen=True)
class Recommendation:
    """The top of the whole catalogue for one user, and how many items were scored in how long."""

    ranking: Ranking
    scored: int
    seconds: float
    exclude_seen: bool

    def to_dict(self) -> dict[str, Any]:
        return self.ranking.to_dict(scored=self.scored, seconds=self.seconds, exclude_seen=self.exclude_seen)


@dataclass(frozen=True)
class Context:
    """The context a query is scored in: each context column's value (as given, or its default), the
    columns that took their default, and the categorical ones given a value never seen in training (which
    takes the table's row of unseen values)."""

    values: dict[str, float | str]
    defaulted: list[str]
    rows: ContextRows
    unseen: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"context": dict(self.values), "context_defaulted": list(self.defaulted)}


def query_context(loaded: LoadedModel, given: dict[str, Any] | None) -> Context | None:
    """The context of a query from the values ``given`` (column -> value); None for a model without context
    columns, which refuses any given value (``DlrmUsageError``)."""
    table = loaded.catalog.context
    if table is None:
        if given:
            raise DlrmUsageError(
                f"checkpoint {loaded.checkpoint.name} has no context columns, so it takes no context "
                f"(got {next(iter(given))!r})"
            )
        return None
    rows, defaulted = table.parse(given)
    values = {name: (given or {}).get(name, table.defaults[name]) for name in table.names}
    values = {name: float(v) if name in table.dense else str(v) for name, v in values.items()}
    unseen = tuple(name for name, found in rows.sparse.items() if bool((found == 0).any()))
    return Context(values, defaulted, rows, unseen)


@dataclass(frozen=True)
class Query:
    """One user's items to score and rank: what predict and recommend ask, ready to be scored together with
    other queries in one pass (``answer``)."""

    user: str
    user_row: torch.Tensor  # size 1
    item_rows: torch.Tensor
    items: list[str] | None = None  # the ids as asked for (default: the catalogue's keys)
    limit: int | None = None
    scored: int = 0
    exclude_seen: bool = False
    order: torch.Tensor | None = None  # two stages: the ranker's logit of each of item_rows, which orders them
    context: Context | None = None  # a model with context columns: the moment the user asks in


def predict_query(loaded: LoadedModel, user: str, items: list[str], context: dict[str, Any] | None = None) -> Query:
    """The query that scores ``items`` for ``user`` in ``context`` (column -> value; a column not given takes
    its default, see ``query_context``).

    Ids never seen in training take the shared out-of-vocabulary row where the checkpoint has one
    (real data); for synthetic data, whose ids are a fixed range, an unknown id is a usage error."""
    moment = query_context(loaded, context)
    item_rows = entity_rows(loaded.catalog.items, items)
    return Query(user, _user_row(loaded, user), item_rows, items, scored=len(items), context=moment)


def recommend_query(
    loaded: LoadedModel,
    user: str,
    top: int,
    exclude_seen: bool,
    candidates: int | None = None,
    context: dict[str, Any] | None = None,
) -> Query:
    """The query for the ``top`` items of the whole catalogue for ``user`` in ``context`` (see
    ``predict_query``); ``exclude_seen`` drops the items the user rated in the training rows (kept in the
    checkpoint). A two-stage checkpoint retrieves ``candidates`` items (default: its own count), without the
    context, and its ranker orders them in the context (a ranker trained without context columns: the same
    order in any); the predicted ratings shown beside them read it too."""
    check_retrieve(loaded, candidates, exclude_seen, top)
    moment = query_context(loaded, context)
    user_row = _user_row(loaded, user)
    if loaded.stages is not None and exclude_seen:
        return replace(_two_stage_query(loaded, user, user_row, top, candidates, moment), context=moment)
    candidates_rows = torch.arange(len(loaded.catalog.items.keys))
    if exclude_seen:
        keep = torch.ones(len(candidates_rows), dtype=torch.bool)
        keep[loaded.known.seen.of(int(user_row[0]))] = False
        candidates_rows = candidates_rows[keep]
        if len(candidates_rows) == 0:
            raise DlrmError(
                f"nothing to recommend: user {user} rated every one of the {len(keep):,} items this checkpoint "
                "knows (pass --include-seen to rank them)"
            )
    scored = len(candidates_rows)
    return Query(user, user_row, candidates_rows, limit=top, scored=scored, exclude_seen=exclude_seen, context=moment)


def check_retrieve(
    loaded: LoadedModel, candidates: int | None, exclude_seen: bool = True, top: int | None = None
) -> None:
    """Refuse a count of candidates that nothing would use, or more than a two-stage checkpoint's ranker
    was trained to order (``top`` items need at least as many candidates)."""
    stages = loaded.stages
    if candidates is not None:
        if candidates < 1:
            raise DlrmUsageError(f"--retrieve must be at least 1, got {candidates}")
        if stages is None:
            raise DlrmUsageError(
                f"--retrieve needs a two-stage checkpoint; {loaded.checkpoint.name} ranks every item with one model"
            )
        if not exclude_seen:
            raise DlrmUsageError("--retrieve does not go with --include-seen (the main model ranks every item)")
    if stages is None or not exclude_seen:
        return
    trained = stages.candidates
    if candidates is not None and candidates > trained:
        raise DlrmUsageError(
            f"--retrieve {candidates:,} is more than the {trained:,} candidates checkpoint {loaded.checkpoint.name}'s "
            f"ranker was trained to order (train with --retrieve {candidates:,})"
        )
    wanted = min(top or 0, int(stages.allowed.sum()))
    if wanted > trained:
        raise DlrmUsageError(
            f"top {wanted:,} is more than the {trained:,} candidates checkpoint {loaded.checkpoint.name} ranks in two "
            f"stages (ask for at most {trained:,}, train with --retrieve {wanted:,}, or pass --include-seen)"
        )


def _two_stage_query(
    loaded: LoadedModel, user: str, user_row: torch.Tensor, top: int, candidates: int | None, moment: Context | None
) -> Query:
    """The query of a two-stage checkpoint: the generator's best candidates for the user, ordered by the ranker
    in ``moment``."""
    stages = loaded.stages
    assert stages is not None
    items, logits = stages.recommend(user_row, top, candidates, _rows(moment, 1))
    kept = torch.isfinite(logits[0])
    if not bool(kept.any()):
        raise DlrmError(
            f"nothing to recommend: user {user} knows every one of the {int(stages.allowed.sum()):,} items this "
            "checkpoint can recommend (pass --include-seen to rank them)"
        )
    recommendable = int(stages.allowed.sum()) - len(stages.history.of(int(user_row[0])))
    return Query(
        user, user_row, items[0][kept], limit=top, scored=recommendable, exclude_seen=True, order=logits[0][kept]
    )


def answer(loaded: LoadedModel, queries: list[Query]) -> list[Ranking]:
    """Score every query's pairs in one pass of the model, then rank each query's items best first."""
    if not queries:
        return []
    users = torch.cat([query.user_row.expand(len(query.item_rows)) for query in queries])
    items = torch.cat([query.item_rows for query in queries])
    sizes = [len(query.item_rows) for query in queries]
    context = _pairs_context(queries)
    heads = loaded.model.config.heads
    if "ranking" in heads and any(query.limit is not None for query in queries):
        predicted, orders = score_heads(loaded.model, loaded.catalog, users, items, loaded.device, context)
    else:
        predicted = orders = score(loaded.model, loaded.catalog, users, items, loaded.device, context=context)
    two_heads = "rating" in heads and "ranking" in heads  # whose recommendations show both
    rankings = []
    for query, part, order in zip(queries, predicted.split(sizes), orders.split(sizes), strict=True):
        if query.order is not None and "rating" in heads:  # two stages: the ranker orders; its probability
            rankings.append(_ranking(loaded, query, part, query.order, True))  # shows beside the rating
        elif query.order is not None:  # no rating to show: the ranker's probability is the score
            rankings.append(_ranking(loaded, query, torch.sigmoid(query.order), query.order))
        else:
            recommending = query.limit is not None
            rankings.append(_ranking(loaded, query, part, order if recommending else part, two_heads and recommending))
    return rankings


def _pairs_context(queries: list[Query]) -> ContextRows | None:
    """The context of every pair of the queries, in order (each query's one row, once per item)."""
    if not queries or queries[0].context is None:
        return None
    return joined_context([query.context.rows.expand(len(query.item_rows)) for query in queries])  # type: ignore[union-attr]


def joined_context(parts: list[ContextRows]) -> ContextRows:
    """Context rows one after another; a multi-valued column's rows padded to the widest part's values."""
    sparse = {}
    for name in parts[0].sparse:
        width = max(part.sparse[name].shape[1] for part in parts)
        padded = [torch.nn.functional.pad(part.sparse[name], (0, width - part.sparse[name].shape[1]), value=PAD)
                  for part in parts]  # fmt: skip
        sparse[name] = torch.cat(padded)
    return ContextRows(torch.cat([part.dense for part in parts]), sparse)


def rank_items(loaded: LoadedModel, user: str, items: list[str], context: dict[str, Any] | None = None) -> Ranking:
    """Score ``items`` for ``user`` in ``context``, best first (see ``predict_query``)."""
    return answer(loaded, [predict_query(loaded, user, items, context)])[0]


def recommend(
    loaded: LoadedModel,
    user: str,
    top: int,
    exclude_seen: bool,
    retrieve: int | None = None,
    explain: bool = False,
    context: dict[str, Any] | None = None,
) -> Recommendation:
    """The ``top`` items of the whole catalogue for ``user``, scored in large vectorised batches.
    ``exclude_seen`` drops the items the user rated in the training rows; ``retrieve``: see ``recommend_query``;
    ``explain``: each item names the user's training items behind it (``scoring.explain``)."""
    started = time.perf_counter()
    query = recommend_query(loaded, user, top, exclude_seen, retrieve, context)
    ranking = answer(loaded, [query])[0]
    if explain:
        ranking = explain_ranking(loaded, ranking)
    return Recommendation(ranking, query.scored, time.perf_counter() - started, exclude_seen)


def _user_row(loaded: LoadedModel, user: str) -> torch.Tensor:
    return entity_rows(loaded.catalog.users, [user])


def entity_rows(table: EntityTable, ids: list[str]) -> torch.Tensor:
    """The rows of raw ids; an unknown id takes the neutral row, or is a usage error where there is none."""
    rows, unknown = table.lookup(ids)
    if unknown and table.neutral_row is None:
        listed = ", ".join(repr(raw) for raw in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise DlrmUsageError(f"unknown {table.kind} id{plural} {listed}: {_id_range(table)}")
    return rows


def _ranking(
    loaded: LoadedModel, query: Query, predicted: torch.Tensor, by: torch.Tensor, with_scores: bool = False
) -> Ranking:
    """A query's items with their predicted ratings, sorted best first by ``by``: the predicted ratings for
    predict, the ranking head's scores (where the model has one) for recommend; ``with_scores``: ``by`` is
    a ranking head's logits beside a rating head, and each item shows its probability too."""
    catalog = loaded.catalog
    order = torch.argsort(by, descending=True, stable=True)[: query.limit]
    rows = query.item_rows[order]
    unseen = catalog.items.unseen_in_training(rows).tolist()
    titles = catalog.items.titles
    if query.items is not None:
        names = [query.items[i] for i in order.tolist()]
    else:
        names = [str(k) for k in catalog.items.keys[rows.numpy()]]
    scores = torch.sigmoid(by[order]).tolist() if with_scores else [None] * len(order)
    described = catalog.items.features_of
    ranked = [
        RankedItem(name, (titles[row] or None) if titles else None, float(value), flag, score, described(row))
        for name, row, value, flag, score in zip(
            names, rows.tolist(), predicted[order].tolist(), unseen, scores, strict=True
        )
    ]
    return Ranking(
        checkpoint=loaded.checkpoint.name,
        user=query.user,
        rating_max=loaded.model.config.rating_max,
        items=ranked,
        user_unseen=bool(catalog.users.unseen_in_training(query.user_row)[0]),
        scored_as="rating" if "rating" in loaded.model.config.heads else "score",
        context=query.context,
    )


def _id_range(table: EntityTable) -> str:
    keys = table.keys
    if table.integer_ids and len(keys) and int(keys[-1]) - int(keys[0]) + 1 == len(keys):
        return f"this checkpoint knows {table.kind} ids {int(keys[0])} to {int(keys[-1])}"
    return f"this checkpoint knows {len(keys):,} {table.kind} ids"


@dataclass(frozen=True)
class BatchRecommendations:
    """The top items for many users: one row per (user, rank), written by ``write``."""

    checkpoint: str
    users: list[str]
    rank: torch.Tensor  # U x top
    items: list[list[str]]
    scores: torch.Tensor  # U x top
    unseen_items: torch.Tensor  # U x top, bool
    titles: list[list[str]] | None
    unknown_users: list[str]
    exclude_seen: bool
    seconds: float
    context: Context | None = None  # the context every user was scored in (a model with context columns)
    same_in_any_context: bool = False  # two stages whose ranker reads no context chose and ordered the items

    def frame(self) -> Any:
        import pandas as pd

        top = self.scores.shape[1] if len(self.users) else 0
        frame = pd.DataFrame(
            {
                "user": np.repeat(np.array(self.users, dtype=object), top),
                "rank": np.tile(np.arange(1, top + 1), len(self.users)),
                "item": [item for row in self.items for item in row],
                "score": self.scores.reshape(-1).numpy(),
                "unseen_in_training": self.unseen_items.reshape(-1).numpy(),
            }
        )
        if self.titles is not None:
            frame.insert(3, "title", [title for row in self.titles for title in row])
        # a user who rated nearly everything has fewer items left than --top: those slots are dropped
        return frame[np.isfinite(frame["score"].to_numpy())].reset_index(drop=True)

    def summary(self, output: Path, rows: int, top: int) -> dict[str, Any]:
        """``recommend --all-users --json``'s document, once ``rows`` rows were written to ``output``."""
        return {
            "checkpoint": self.checkpoint,
            "output": str(output),
            "users": len(self.users),
            "rows": rows,
            "top": top,
            "exclude_seen": self.exclude_seen,
            "unknown_users": self.unknown_users,
            "seconds": self.seconds,
            **(self.context.to_dict() if self.context is not None else {}),
        }

    def write(self, output: Path) -> int:
        """Write CSV or (with pyarrow) Parquet by the suffix, atomically; returns the rows written."""
        from dlrm_cli.runtime.files import temporary_beside

        frame = self.frame()
        tmp = temporary_beside(output)
        try:
            if output.suffix.lower() == ".parquet":
                frame.to_parquet(tmp, index=False)
            else:
                frame.to_csv(tmp, index=False)
            os.replace(tmp, output)
        except OSError as error:
            raise DlrmError(f"cannot write {output}: {error.strerror or error}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return len(frame)


USERS_PER_CHUNK = 128


def recommend_many(
    loaded: LoadedModel,
    users: list[str] | None,
    top: int,
    exclude_seen: bool,
    progress: Any = None,
    candidates: int | None = None,
    context: dict[str, Any] | None = None,
) -> BatchRecommendations:
    """The ``top`` items of the whole catalogue for each user (``None``: every user of the training data),
    in chunks of users scored together; ``progress(done, total)`` hears the way. A two-stage checkpoint
    retrieves ``candidates`` items a user (default: its own count) and its ranker orders them. ``context``:
    the one context every user is scored in (see ``query_context``), which the ranker of two stages orders in."""
    check_retrieve(loaded, candidates, exclude_seen, top)
    moment = query_context(loaded, context)
    started = time.perf_counter()
    table = loaded.catalog.users
    if users is None:  # every user of the training data (side files may list users who rated nothing)
        trained = ~table.unseen_in_training(torch.arange(len(table.keys)))
        users = [str(key) for key in table.keys[trained.numpy()]]
    rows, unknown = table.lookup(users)
    if unknown and table.neutral_row is None:
        raise DlrmUsageError(f"unknown user id {unknown[0]!r}: {_id_range(table)}")
    top = min(top, len(loaded.catalog.items.keys))
    two_stage = loaded.stages is not None and exclude_seen
    best = _two_stage_chunks if two_stage else _one_stage_chunks
    chosen, scores = best(loaded, rows, top, exclude_seen, progress, candidates, moment)
    if two_stage or "ranking" in loaded.model.config.heads:  # logits, as the probability recommend shows
        scores = torch.sigmoid(scores).masked_fill(scores == float("-inf"), float("-inf"))  # -inf: no item
    keys, titles = loaded.catalog.items.keys, loaded.catalog.items.titles
    return BatchRecommendations(
        checkpoint=loaded.checkpoint.name,
        users=users,
        rank=torch.arange(1, chosen.shape[1] + 1).expand(len(users), -1),
        items=[[str(keys[i]) for i in row] for row in chosen.tolist()],
        scores=scores,
        unseen_items=loaded.catalog.items.unseen_in_training(chosen.reshape(-1)).view(chosen.shape),
        titles=[[titles[i] for i in row] for row in chosen.tolist()] if titles else None,
        unknown_users=unknown,
        exclude_seen=exclude_seen,
        seconds=time.perf_counter() - started,
        context=moment,
        same_in_any_context=two_stage and loaded.stages is not None and not loaded.stages.reads_context,
    )


def _one_stage_chunks(
    loaded: LoadedModel,
    rows: torch.Tensor,
    top: int,
    exclude_seen: bool,
    progress: Any,
    candidates: int | None,
    context: Context | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The main model's best ``top`` items of every item for each user row, in ``context`` (items, scores:
    U x top)."""
    from dlrm_cli.scoring.ranking import pairs_matrix

    catalog = loaded.catalog
    n_items = len(catalog.items.keys)
    items = torch.arange(n_items)
    seen_users = seen_items = torch.empty(0, dtype=torch.long)
    if exclude_seen:
        seen_users, seen_items = loaded.known.seen.pairs()
    best_scores, best_items = [], []
    for start in range(0, len(rows), USERS_PER_CHUNK):
        chunk = rows[start : start + USERS_PER_CHUNK]
        moment = context.rows if context is not None else None
        predicted = score_grid(loaded.model, catalog, chunk, items, loaded.device, context=moment)
        if exclude_seen:
            seen = pairs_matrix(chunk, seen_users, seen_items, len(catalog.users.keys) + 1, n_items)
            predicted = predicted.masked_fill(seen, float("-inf"))
        values, order = torch.topk(predicted, top, dim=1)  # ties: torch.topk's order, stable on CPU
        best_scores.append(values)
        best_items.append(order)
        if progress is not None:
            progress(min(start + USERS_PER_CHUNK, len(rows)), len(rows))
    return _joined(best_items, best_scores, top)


def _two_stage_chunks(
    loaded: LoadedModel,
    rows: torch.Tensor,
    top: int,
    exclude_seen: bool,
    progress: Any,
    candidates: int | None,
    context: Context | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two stages' best ``top`` items for each user row (items, ranker logits: U x top; -inf past a
    user's last recommendable item), ordered in ``context`` (the generator does not read it)."""
    stages = loaded.stages
    assert stages is not None
    best_scores, best_items = [], []
    for start in range(0, len(rows), USERS_PER_CHUNK):
        chunk = rows[start : start + USERS_PER_CHUNK]
        items, logits = stages.recommend(chunk, top, candidates, _rows(context, len(chunk)))
        best_scores.append(logits)
        best_items.append(items)
        if progress is not None:
            progress(min(start + USERS_PER_CHUNK, len(rows)), len(rows))
    return _joined(best_items, best_scores, top)


def _rows(context: Context | None, users: int) -> ContextRows | None:
    """The context's row once per user (None: no context columns)."""
    return None if context is None else context.rows.expand(users)


def _joined(items: list[torch.Tensor], scores: list[torch.Tensor], top: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not items:
        return torch.empty(0, top, dtype=torch.long), torch.empty(0, top)
    return torch.cat(items), torch.cat(scores)
