"""Using a trained model: evaluate it on a split, rank items for a user, recommend from the catalogue.

Each function returns a result object; its ``to_dict()`` is the command's ``--json`` document.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrm_cli.config import CsvColumns, DataSource, FileSource
from dlrm_cli.data import load_dataset
from dlrm_cli.data.catalog import EntityTable, Ratings
from dlrm_cli.errors import DataError, DlrmError, DlrmUsageError
from dlrm_cli.loading import LoadedModel
from dlrm_cli.metrics import candidate_scorer, classification_metrics, error_metrics, score, score_grid, score_heads

SPLITS = ("test", "validation")


@dataclass(frozen=True)
class Evaluation:
    """Error metrics of a checkpoint beside the global-mean baseline and (synthetic data) the noise floor."""

    checkpoint: str
    data: str
    split: str
    count: int
    model: dict[str, float]
    global_mean_baseline: dict[str, float]
    noise_floor: dict[str, float] | None
    training_overlap: int | None = 0  # with --data: ratings whose pair it trained on (None: not checkable)
    # With a ranking head: AUC and log loss of the held-out pairs against sampled negatives (``interactions``).
    interactions: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Scored:
    """Ratings beside the model's predictions of them; for synthetic data also what a perfect model predicts."""

    data: str
    split: str
    ratings: Ratings
    predicted: torch.Tensor
    expected: torch.Tensor | None
    training_overlap: int | None = 0
    interactions: dict[str, float] | None = None


def evaluate(loaded: LoadedModel, split: str, data: DataSource | None = None) -> Evaluation:
    """MSE, RMSE and MAE of the model beside two references: always predicting the training mean, and
    (for synthetic data) the best any model can do.

    Without ``data``: on a split of the data the checkpoint was trained on. With ``data``: on every
    rating in it, ids mapped through the checkpoint's vocabularies."""
    return evaluation_of(loaded, score_ratings(loaded, split, data))


def score_ratings(loaded: LoadedModel, split: str, data: DataSource | None = None) -> Scored:
    """The model's predictions for the ratings ``evaluate`` scores (see there for ``split`` and ``data``)."""
    if split not in SPLITS:
        raise DlrmUsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    expected, train = None, None
    if data is None:
        trained_on = loaded.checkpoint.run.data
        dataset = load_dataset(trained_on)
        ratings, train = dataset.split(split), dataset.train
        expected = dataset.expected.get(split)
        kind = trained_on.kind
    else:
        if not isinstance(data, FileSource):
            raise DlrmUsageError("--data takes movielens:DIR or csv:FILE here")
        ratings = _ratings_from(loaded, data)
        split, kind = "all", data.kind
    overlap = _training_overlap(loaded, ratings) if data is not None else 0
    predicted = score(loaded.model, loaded.catalog, ratings.user, ratings.item, loaded.device)
    interactions = None
    if "ranking" in loaded.model.config.heads and len(ratings):
        train = train if train is not None else load_dataset(loaded.checkpoint.run.data).train
        interactions = interaction_metrics(loaded, ratings, train)
    return Scored(kind, split, ratings, predicted, expected, overlap, interactions)


def interaction_metrics(loaded: LoadedModel, held_out: Ratings, train: Ratings, seed: int = 0) -> dict[str, float]:
    """AUC and log loss of the ranking head on held-out pairs (each a positive) against as many negatives per
    pair as the run trained with, drawn (seeded) uniformly among the items with ratings in ``train``."""
    negative_users, negative_items = seeded_negatives(loaded, held_out, train, seed)
    model, catalog, device = loaded.model, loaded.catalog, loaded.device
    positive = score(model, catalog, held_out.user, held_out.item, device, ranking=True)
    negative = score(model, catalog, negative_users, negative_items, device, ranking=True)
    negatives = int(loaded.checkpoint.run.train.negatives)
    return {**classification_metrics(positive, negative), "negatives_per_interaction": negatives}


def seeded_negatives(
    loaded: LoadedModel, held_out: Ratings, train: Ratings, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (user rows, item rows) of as many negatives per held-out pair as the run trained with, drawn
    (seeded) uniformly among the items with ratings in ``train``: each pair's user, repeated."""
    negatives = int(loaded.checkpoint.run.train.negatives)
    trained = torch.zeros(len(loaded.catalog.items) + 1, dtype=torch.bool)
    trained[train.item] = True
    pool = torch.nonzero(trained).squeeze(1)
    generator = torch.Generator().manual_seed(seed)
    drawn = pool[torch.randint(len(pool), (len(held_out) * negatives,), generator=generator)]
    return held_out.user.repeat(negatives), drawn


def _training_overlap(loaded: LoadedModel, ratings: Ratings) -> int | None:
    """How many of ``ratings`` are (user, item) pairs the checkpoint was trained on: scoring them flatters
    it. None when the training data cannot be read any more (moved or changed)."""
    try:
        train = load_dataset(loaded.checkpoint.run.data).train
    except DataError:
        return None
    width = len(loaded.catalog.items) + 1
    trained = (train.user * width + train.item).numpy()
    return int(np.isin((ratings.user * width + ratings.item).numpy(), trained).sum())


def evaluation_of(loaded: LoadedModel, scored: Scored) -> Evaluation:
    """The metrics of scored ratings, beside the global-mean baseline and the noise floor."""
    actual = scored.ratings.rating
    mean = float(loaded.meta["global_mean"])
    return Evaluation(
        checkpoint=loaded.checkpoint.name,
        data=scored.data,
        split=scored.split,
        count=len(scored.ratings),
        model=error_metrics(scored.predicted, actual),
        global_mean_baseline=error_metrics(torch.full_like(actual, mean), actual),
        noise_floor=error_metrics(scored.expected, actual) if scored.expected is not None else None,
        training_overlap=scored.training_overlap,
        interactions=scored.interactions,
    )


def source_to_score(loaded: LoadedModel, text: str) -> DataSource:
    """``evaluate --data``: other data to score, read with the CSV columns the checkpoint was trained with."""
    from dlrm_cli.data import parse_data_option

    columns = None
    if text.startswith("csv:"):
        trained_on = loaded.checkpoint.run.data
        columns = trained_on.columns if isinstance(trained_on, FileSource) else None
        columns = columns or CsvColumns()
    return parse_data_option(text, columns=columns)


def _ratings_from(loaded: LoadedModel, data: FileSource) -> Ratings:
    """Every rating of a data source, its ids mapped to the checkpoint's rows (unknown ids: the neutral row)."""
    from dlrm_cli.data import load_raw

    raw, _ = load_raw(data)
    low, high = loaded.catalog.rating_min, loaded.catalog.rating_max
    outside = (raw.rating < low) | (raw.rating > high)
    if outside.any():  # scoring it would give a figure for a scale the model does not predict on
        from dlrm_cli.data.readers import locate, rating_file_lines

        at = int(np.argmax(outside))
        where = locate(rating_file_lines(Path(data.path), data.kind, [Path(f) for f in data.files], data.columns), at)
        raise DataError(
            f"{where}: rating {raw.rating[at]:g} is outside this checkpoint's rating scale, {low:g} to {high:g}"
        )
    rows = []
    for table, ids in ((loaded.catalog.users, raw.user), (loaded.catalog.items, raw.item)):
        found = table.rows_for(ids)
        if (found < 0).any():
            if table.neutral_row is None:
                unknown = ids[found < 0][0]
                raise DataError(f"{data.path} has {table.kind} id {unknown!r}, which this checkpoint does not know")
            found[found < 0] = table.neutral_row
        rows.append(torch.from_numpy(found))
    return Ratings(rows[0], rows[1], torch.from_numpy(raw.rating))


@dataclass(frozen=True)
class RankedItem:
    item: str
    title: str | None
    rating: float
    unseen: bool
    score: float | None = None  # a two-headed model's recommendations: the ranking head's probability


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

    @property
    def unseen_items(self) -> list[str]:
        return [entry.item for entry in self.items if entry.unseen]

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        from dlrm_cli.ui import stars

        return {
            "checkpoint": self.checkpoint,
            "user": self.user,
            **extra,
            "recommended": self.items[0].item if self.items else None,
            "user_unseen_in_training": self.user_unseen,
            "items": [
                {
                    "rank": rank,
                    "item": entry.item,
                    "title": entry.title,
                    **(
                        {"rating": entry.rating, "stars": stars(entry.rating, self.rating_max)}
                        if self.scored_as == "rating"
                        else {"score": entry.rating}
                    ),
                    **({"score": entry.score} if entry.score is not None else {}),
                    "unseen_in_training": entry.unseen,
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


class SeenItems:
    """The items each user rated in the training rows, built once (recommend's ``exclude_seen``)."""

    def __init__(self, loaded: LoadedModel) -> None:
        train = load_dataset(loaded.checkpoint.run.data).train
        order = torch.argsort(train.user, stable=True)
        self.items = train.item[order]
        counts = torch.bincount(train.user, minlength=len(loaded.catalog.users) + 1)
        self.starts = torch.cat((torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)))

    def of(self, user_row: int) -> torch.Tensor:
        return self.items[self.starts[user_row] : self.starts[user_row + 1]]


def predict_query(loaded: LoadedModel, user: str, items: list[str]) -> Query:
    """The query that scores ``items`` for ``user``.

    Ids never seen in training take the shared out-of-vocabulary row where the checkpoint has one
    (real data); for synthetic data, whose ids are a fixed range, an unknown id is a usage error."""
    item_rows = entity_rows(loaded.catalog.items, items)
    return Query(user, _user_row(loaded, user), item_rows, items, scored=len(items))


def recommend_query(
    loaded: LoadedModel, user: str, top: int, exclude_seen: bool, seen: SeenItems | None = None
) -> Query:
    """The query for the ``top`` items of the whole catalogue for ``user``; ``exclude_seen`` drops the items
    the user rated in the training rows (``seen``: those items, built here when not given)."""
    user_row = _user_row(loaded, user)
    candidates = torch.arange(len(loaded.catalog.items.keys))
    if exclude_seen:
        seen = seen or SeenItems(loaded)
        keep = torch.ones(len(candidates), dtype=torch.bool)
        keep[seen.of(int(user_row[0]))] = False
        candidates = candidates[keep]
        if len(candidates) == 0:
            raise DlrmError(
                f"nothing to recommend: user {user} rated every one of the {len(keep):,} items this checkpoint "
                "knows (pass --include-seen to rank them)"
            )
    return Query(user, user_row, candidates, limit=top, scored=len(candidates), exclude_seen=exclude_seen)


def answer(loaded: LoadedModel, queries: list[Query]) -> list[Ranking]:
    """Score every query's pairs in one pass of the model, then rank each query's items best first."""
    if not queries:
        return []
    users = torch.cat([query.user_row.expand(len(query.item_rows)) for query in queries])
    items = torch.cat([query.item_rows for query in queries])
    sizes = [len(query.item_rows) for query in queries]
    heads = loaded.model.config.heads
    if "ranking" in heads and any(query.limit is not None for query in queries):
        predicted, orders = score_heads(loaded.model, loaded.catalog, users, items, loaded.device)
    else:
        predicted = orders = score(loaded.model, loaded.catalog, users, items, loaded.device)
    two_heads = "rating" in heads and "ranking" in heads  # whose recommendations show both
    return [
        _ranking(loaded, query, part, order if query.limit is not None else part, two_heads and query.limit is not None)
        for query, part, order in zip(queries, predicted.split(sizes), orders.split(sizes), strict=True)
    ]


def rank_items(loaded: LoadedModel, user: str, items: list[str]) -> Ranking:
    """Score ``items`` for ``user``, best first (see ``predict_query`` for unknown ids)."""
    return answer(loaded, [predict_query(loaded, user, items)])[0]


def recommend(
    loaded: LoadedModel, user: str, top: int, exclude_seen: bool, seen: SeenItems | None = None
) -> Recommendation:
    """The ``top`` items of the whole catalogue for ``user``, scored in large vectorised batches.
    ``exclude_seen`` drops the items the user rated in the training rows (``seen``, built when not given)."""
    started = time.perf_counter()
    query = recommend_query(loaded, user, top, exclude_seen, seen)
    ranking = answer(loaded, [query])[0]
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
    ranked = [
        RankedItem(name, (titles[row] or None) if titles else None, float(value), flag, score)
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
    )


def _id_range(table: EntityTable) -> str:
    keys = table.keys
    if table.integer_ids and len(keys) and int(keys[-1]) - int(keys[0]) + 1 == len(keys):
        return f"this checkpoint knows {table.kind} ids {int(keys[0])} to {int(keys[-1])}"
    return f"this checkpoint knows {len(keys):,} {table.kind} ids"


@dataclass(frozen=True)
class RankingEvaluation:
    """Top-K ranking metrics of a checkpoint on a held-out split, beside baselines computed in the same run
    (see ``dlrm_cli.ranking`` for the protocol)."""

    checkpoint: str
    split: str
    ks: list[int]
    relevant: float
    sampled: int | None
    users: int
    skipped: int
    candidates: int
    models: dict[str, dict[str, Any]]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_evaluation(
    loaded: LoadedModel,
    split: str,
    ks: tuple[int, ...],
    relevant: float = 4.0,
    sampled: int | None = None,
    baselines: bool = True,
    progress: Any = None,
) -> RankingEvaluation:
    """Rank every candidate item for each held-out user of ``split`` with the model and, with
    ``baselines``, with most-popular, PureSVD and EASE; ``progress(name, done, total)`` hears the way."""
    from dlrm_cli.ranking import BASELINES, held_out_task, rank_metrics

    if split not in SPLITS:
        raise DlrmUsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    task = held_out_task(load_dataset(loaded.checkpoint.run.data), split, relevant)
    if len(task.users) == 0:
        raise DlrmError(f"no user of the {split} split has a rating of {relevant:g} or more to rank for")
    fits = {"DLRM": functools.partial(candidate_scorer, loaded.model, loaded.catalog, task, loaded.device)}
    if baselines:
        fits.update({name: functools.partial(make, task) for name, make in BASELINES.items()})
    models, seconds = {}, {}
    for name, fit in fits.items():
        started = time.perf_counter()
        scorer = fit()  # a baseline is fitted here, inside its timing

        def report(done: int, total: int, name: str = name) -> None:
            if progress is not None:
                progress(name, done, total)

        models[name] = rank_metrics(task, scorer, ks, report, sampled=sampled)
        seconds[name] = time.perf_counter() - started
    return RankingEvaluation(
        checkpoint=loaded.checkpoint.name,
        split=split,
        ks=sorted(set(ks)),
        relevant=relevant,
        sampled=sampled,
        users=len(task.users),
        skipped=task.skipped,
        candidates=int(task.candidates.sum()),
        models=models,
        seconds=seconds,
    )


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

    def write(self, output: Path) -> int:
        """Write CSV or (with pyarrow) Parquet by the suffix, atomically; returns the rows written."""
        from dlrm_cli.parsing import temporary_beside

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
) -> BatchRecommendations:
    """The ``top`` items of the whole catalogue for each user (``None``: every user of the training data),
    in chunks of users scored together; ``progress(done, total)`` hears the way."""
    from dlrm_cli.ranking import pairs_matrix

    started = time.perf_counter()
    catalog = loaded.catalog
    table = catalog.users
    if users is None:  # every user of the training data (side files may list users who rated nothing)
        trained = ~table.unseen_in_training(torch.arange(len(table.keys)))
        users = [str(key) for key in table.keys[trained.numpy()]]
    rows, unknown = table.lookup(users)
    if unknown and table.neutral_row is None:
        raise DlrmUsageError(f"unknown user id {unknown[0]!r}: {_id_range(table)}")
    n_items = len(catalog.items.keys)
    items = torch.arange(n_items)
    top = min(top, n_items)
    seen_users = seen_items = torch.empty(0, dtype=torch.long)
    if exclude_seen:
        train = load_dataset(loaded.checkpoint.run.data).train
        seen_users, seen_items = train.user, train.item
    best_scores, best_items = [], []
    for start in range(0, len(rows), USERS_PER_CHUNK):
        chunk = rows[start : start + USERS_PER_CHUNK]
        predicted = score_grid(loaded.model, catalog, chunk, items, loaded.device)
        if exclude_seen:
            seen = pairs_matrix(chunk, seen_users, seen_items, len(table.keys) + 1, n_items)
            predicted = predicted.masked_fill(seen, float("-inf"))
        values, order = torch.topk(predicted, top, dim=1)  # ties: torch.topk's order, stable on CPU
        best_scores.append(values)
        best_items.append(order)
        if progress is not None:
            progress(min(start + USERS_PER_CHUNK, len(rows)), len(rows))
    scores = torch.cat(best_scores) if best_scores else torch.empty(0, top)
    if "ranking" in loaded.model.config.heads:  # the ranking head's logits, as the probability recommend shows
        scores = torch.sigmoid(scores)
    chosen = torch.cat(best_items) if best_items else torch.empty(0, top, dtype=torch.long)
    keys = catalog.items.keys
    titles = catalog.items.titles
    return BatchRecommendations(
        checkpoint=loaded.checkpoint.name,
        users=users,
        rank=torch.arange(1, top + 1).expand(len(users), -1),
        items=[[str(keys[i]) for i in row] for row in chosen.tolist()],
        scores=scores,
        unseen_items=catalog.items.unseen_in_training(chosen.reshape(-1)).view(chosen.shape),
        titles=[[titles[i] for i in row] for row in chosen.tolist()] if titles else None,
        unknown_users=unknown,
        exclude_seen=exclude_seen,
        seconds=time.perf_counter() - started,
    )
