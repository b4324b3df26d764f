"""How good a checkpoint is on held-out rows: error metrics (``evaluate``), the ranking head's AUC, and top-K
ranking beside baselines fitted in the same run (``evaluate --k``).

Each function returns a result object; its ``to_dict()`` is the command's ``--json`` document.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrm_cli.config import CsvColumns, DataSource, FileSource, relevant_rating
from dlrm_cli.data.catalog import Ratings
from dlrm_cli.data.context import ContextRows, ContextTable, RawContext, filled_context
from dlrm_cli.data.sources import load_dataset
from dlrm_cli.errors import DataError, DlrmError, DlrmUsageError
from dlrm_cli.retrieval.generators import fit_generator
from dlrm_cli.retrieval.history import History
from dlrm_cli.retrieval.two_stage import TwoStage
from dlrm_cli.runtime.progress import Progress, silent
from dlrm_cli.scoring.metrics import (
    EVAL_BATCH,
    candidate_scorer,
    classification_metrics,
    context_slice,
    error_metrics,
    score,
)
from dlrm_cli.scoring.recommending import check_retrieve
from dlrm_cli.store.loading import LoadedModel

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


def evaluate(
    loaded: LoadedModel, split: str, data: DataSource | None = None, progress: Progress = silent
) -> Evaluation:
    """MSE, RMSE and MAE of the model beside two references: always predicting the training mean, and
    (for synthetic data) the best any model can do.

    Without ``data``: on a split of the data the checkpoint was trained on. With ``data``: on every
    rating in it, ids mapped through the checkpoint's vocabularies. ``progress`` hears the steps."""
    return evaluation_of(loaded, score_ratings(loaded, split, data, progress))


SCORED_PER_STEP = 4 * EVAL_BATCH  # pairs scored between two progress reports


def score_in_steps(
    loaded: LoadedModel,
    users: torch.Tensor,
    items: torch.Tensor,
    label: str,
    progress: Progress,
    ranking: bool = False,
    context: ContextRows | None = None,
) -> torch.Tensor:
    """``score`` of these pairs, a slice at a time, telling ``progress`` how many are done; ``context`` as
    ``score``'s."""
    model, catalog, device = loaded.model, loaded.catalog, loaded.device
    parts, total = [], len(users)
    progress(label, 0, total)
    for start in range(0, total, SCORED_PER_STEP):
        chunk = slice(start, start + SCORED_PER_STEP)
        size = users[chunk].shape[0]
        pairs = context_slice(context, start, size)
        parts.append(score(model, catalog, users[chunk], items[chunk], device, ranking=ranking, context=pairs))
        progress(label, min(start + SCORED_PER_STEP, total), total)
    return torch.cat(parts) if parts else score(model, catalog, users, items, device, ranking=ranking)


def load_checkpoint_data(loaded: LoadedModel, progress: Progress = silent) -> Any:
    """The data set the checkpoint was trained on (from the parse cache when unchanged); ``progress`` hears it."""
    progress(f"Loading the {loaded.checkpoint.run.data.kind} data")
    return load_dataset(loaded.checkpoint.run.data)


def score_ratings(
    loaded: LoadedModel, split: str, data: DataSource | None = None, progress: Progress = silent
) -> Scored:
    """The model's predictions for the ratings ``evaluate`` scores (see there for ``split`` and ``data``)."""
    if split not in SPLITS:
        raise DlrmUsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    expected, train = None, None
    if data is None:
        trained_on = loaded.checkpoint.run.data
        dataset = load_checkpoint_data(loaded, progress)
        ratings, train = dataset.split(split), dataset.train
        expected = dataset.expected.get(split)
        kind = trained_on.kind
    else:
        if not isinstance(data, FileSource):
            raise DlrmUsageError("--data takes movielens:DIR or csv:FILE here")
        progress(f"Reading {data.kind}:{data.path}")
        ratings = _ratings_from(loaded, data)
        split, kind = "all", data.kind
    overlap = _training_overlap(loaded, ratings) if data is not None else 0
    predicted = score_in_steps(loaded, ratings.user, ratings.item, "Scoring ratings", progress, context=ratings.context)
    interactions = None
    if "ranking" in loaded.model.config.heads and len(ratings):
        train = train if train is not None else load_checkpoint_data(loaded, progress).train
        interactions = interaction_metrics(loaded, ratings, train, progress=progress)
    return Scored(kind, split, ratings, predicted, expected, overlap, interactions)


def interaction_metrics(
    loaded: LoadedModel, held_out: Ratings, train: Ratings, seed: int = 0, progress: Progress = silent
) -> dict[str, float]:
    """AUC and log loss of the ranking head on held-out pairs (each a positive, in its own context) against as
    many negatives per pair as the run trained with, drawn (seeded) uniformly among the items with ratings in
    ``train``, each in its pair's context."""
    users, items, context = seeded_negatives(loaded, held_out, train, seed)
    label = "Scoring held-out pairs"
    positive = score_in_steps(loaded, held_out.user, held_out.item, label, progress, True, held_out.context)
    negative = score_in_steps(loaded, users, items, "Scoring sampled negatives", progress, True, context)
    negatives = int(loaded.checkpoint.run.train.negatives)
    return {**classification_metrics(positive, negative), "negatives_per_interaction": negatives}


def seeded_negatives(
    loaded: LoadedModel, held_out: Ratings, train: Ratings, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, ContextRows | None]:
    """The (user rows, item rows, contexts) of as many negatives per held-out pair as the run trained with,
    drawn (seeded) uniformly among the items with ratings in ``train``: each pair's user and context, repeated
    (as training draws them: an item not picked in that moment)."""
    negatives = int(loaded.checkpoint.run.train.negatives)
    trained = torch.zeros(len(loaded.catalog.items) + 1, dtype=torch.bool)
    trained[train.item] = True
    pool = torch.nonzero(trained).squeeze(1)
    generator = torch.Generator().manual_seed(seed)
    drawn = pool[torch.randint(len(pool), (len(held_out) * negatives,), generator=generator)]
    context = held_out.context_of(torch.arange(len(drawn)) % max(len(held_out), 1))
    return held_out.user.repeat(negatives), drawn, context


def _training_overlap(loaded: LoadedModel, ratings: Ratings) -> int | None:
    """How many of ``ratings`` are (user, item) pairs the checkpoint was trained on: scoring them flatters
    it. None when an older checkpoint's training data cannot be read any more (moved or changed)."""
    try:
        users, items = loaded.known.seen.pairs()
    except DataError:
        return None
    width = len(loaded.catalog.items) + 1
    trained = (users * width + items).numpy()
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
    from dlrm_cli.data.sources import parse_data_option

    columns = None
    if text.startswith("csv:"):
        trained_on = loaded.checkpoint.run.data
        columns = trained_on.columns if isinstance(trained_on, FileSource) else None
        columns = columns or CsvColumns()
    trained_on = loaded.checkpoint.run.data
    derived = trained_on.time_features if isinstance(trained_on, FileSource) else ()
    entity_days = [name for name in derived if name in ("user_days", "item_days")]
    if entity_days:
        raise DlrmUsageError(
            f"evaluate --data cannot rebuild {entity_days[0]} (days since a first training rating) for other "
            "data; evaluate this checkpoint on its own test or validation rows"
        )
    source = parse_data_option(
        text, columns=columns, time_features=derived if text.partition(":")[0] != "synthetic" else ()
    )
    return _without_absent_context(loaded, source)


def _without_absent_context(loaded: LoadedModel, source: DataSource) -> DataSource:
    """A CSV that lacks some of the checkpoint's context columns, read without them: each such column takes
    its default in every row (``filled_context``)."""
    from dlrm_cli.data.headers import header_names

    context = loaded.catalog.context
    if context is None or not isinstance(source, FileSource) or source.columns is None or source.files:
        return source
    header = header_names(Path(source.path))
    absent = {name for name in context.names if header is not None and name not in header}
    if not absent:
        return source
    dense = tuple(name for name in source.columns.dense if name not in absent)
    sparse = tuple(name for name in source.columns.sparse if name not in absent)
    return replace(source, columns=replace(source.columns, dense=dense, sparse=sparse))


def _ratings_from(loaded: LoadedModel, data: FileSource) -> Ratings:
    """Every rating of a data source, its ids mapped to the checkpoint's rows (unknown ids: the neutral row)."""
    from dlrm_cli.data.sources import load_raw

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
    context = loaded.catalog.context
    if data.time_features:  # each derived from the rating's own timestamp
        from dlrm_cli.data.features import with_time_features

        raw = replace(raw, context=with_time_features(raw, np.arange(len(raw)), data.time_features))
    encoded = context.encode(_file_context(context, raw)) if context is not None else None
    return Ratings(rows[0], rows[1], torch.from_numpy(raw.rating), encoded)


def _file_context(table: ContextTable, raw: Any) -> RawContext:
    """Each rating's values of the checkpoint's context columns: the file's own, including a column that
    this file happens to hold constant per user or per item (read as a side column there); a column the
    file lacks at its default (``filled_context``)."""
    found = RawContext(dict(raw.context.dense), dict(raw.context.sparse))
    for side, ids in ((raw.users, raw.user), (raw.items, raw.item)):
        at = np.searchsorted(side.ids, ids)  # side.ids: the sorted unique ids of the file
        for kind, names in (("dense", table.dense), ("sparse", table.vocabularies)):
            values, columns = getattr(found, kind), getattr(side, kind)
            values.update({name: columns[name][at] for name in names if name not in values and name in columns})
    return filled_context(table, found, len(raw))


@dataclass(frozen=True)
class RankingEvaluation:
    """Top-K ranking metrics of a checkpoint on a held-out split, beside baselines computed in the same run
    (see ``dlrm_cli.scoring.ranking`` for the protocol)."""

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
    # Two stages: how many candidates the ranker ordered, and the share of relevant items among them (Recall@N
    # of the generator alone: the ceiling of the ranker's recall)
    retrieval: dict[str, Any] | None = None
    of_users: int | None = None  # with --sample-users: how many users ``users`` were drawn from
    left_out: dict[str, str] = field(default_factory=dict)  # baselines not ranked, and why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TWO_STAGES, MAIN_MODEL, GENERATOR = "two stages", "DLRM alone", "retrieval"


def rank_evaluation(
    loaded: LoadedModel,
    split: str,
    ks: tuple[int, ...],
    relevant: float = 4.0,
    sampled: int | None = None,
    baselines: bool = True,
    progress: Progress = silent,
    retrieve: int | None = None,
    sample_users: int | None = None,
) -> RankingEvaluation:
    """Rank every candidate item for each held-out user of ``split`` (or for ``sample_users`` of them, drawn
    uniformly with a fixed seed) with the model and, with ``baselines``, with most-popular, PureSVD and EASE
    (where the catalogue allows it); ``progress`` hears each model's users ranked. A two-stage checkpoint ranks
    three ways: both stages (``retrieve`` candidates a user, default as trained), its generator alone and its
    main model alone."""
    from dlrm_cli.scoring.ranking import held_out_task, rank_metrics, sample_users_of, usable_baselines

    if split not in SPLITS:
        raise DlrmUsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    check_retrieve(loaded, retrieve)
    dataset = load_checkpoint_data(loaded, progress)
    task = held_out_task(dataset, split, relevant)
    if len(task.users) == 0:
        raise DlrmError(f"no user of the {split} split has a rating of {relevant:g} or more to rank for")
    of_users = len(task.users) if sample_users is not None and sample_users < len(task.users) else None
    task = sample_users_of(task, sample_users) if of_users is not None else task
    fits = {"DLRM": functools.partial(candidate_scorer, loaded.model, loaded.catalog, task, loaded.device)}
    retrieval = None
    if loaded.stages is not None:
        progress("Preparing the retrieval stage")
        stages = split_stages(loaded, dataset, split, retrieve, max(ks))
        fits = {
            # each user ranked in the context of the user's first relevant held-out rating, as the DLRM row is
            TWO_STAGES: lambda: lambda users: stages.full_scores(users, context=task.user_context(users)),
            GENERATOR: lambda: stages.generator_scores,
            MAIN_MODEL: fits["DLRM"],
        }
        recall = rank_metrics(task, stages.generator_scores, (stages.candidates,))[f"@{stages.candidates}"]
        retrieval = {"generator": _generator_name(stages), "candidates": stages.candidates}
        retrieval["recall"] = recall["recall"]  # type: ignore[index]
    usable, left_out = usable_baselines(task) if baselines else ({}, {})
    fits.update({name: functools.partial(make, task) for name, make in usable.items()})
    models, seconds = {}, {}
    for name, fit in fits.items():
        started = time.perf_counter()
        progress(f"Ranking users: {name}", 0, len(task.users))  # shown while a baseline is fitted
        scorer = fit()  # a baseline is fitted here, inside its timing

        def report(done: int, total: int, label: str = f"Ranking users: {name}") -> None:
            progress(label, done, total)

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
        retrieval=retrieval,
        of_users=of_users,
        left_out=left_out,
    )


def split_stages(loaded: LoadedModel, dataset: Any, split: str, retrieve: int | None, top: int = 0) -> TwoStage:
    """The checkpoint's two stages as they rank ``split``: the test rows with the generator it saved (fitted
    on the training and validation rows, which the test task knows); the validation rows with the generator
    refitted on the training rows alone, so that it never saw what it is judged on. Like ``recommend``, the
    ranker orders at least ``top`` candidates, up to as many as it was trained on."""
    stages = loaded.stages
    assert stages is not None
    count = max(retrieve or stages.candidates, min(top, stages.candidates))
    if split == "test":
        return replace(stages, candidates=count)
    train = dataset.train
    history = History.of_pairs(train.user, train.item, stages.history.n_users, stages.history.n_items)
    generator = fit_generator(history, stages.generator.kind)
    return replace(stages, generator=generator, history=history, allowed=history.item_counts() > 0, candidates=count)


def _generator_name(stages: TwoStage) -> str:
    return {"ease": "EASE", "svd": "PureSVD"}[stages.generator.kind]


@dataclass(frozen=True)
class EvaluationReport:
    """What ``dlrm evaluate`` reports: the error metrics and, with cut-offs, top-K ranking beside baselines."""

    evaluation: Evaluation
    ranking: RankingEvaluation | None
    implicit: bool  # data without ratings: its rows are interactions
    rated: bool  # the model has a rating head, so a rating error to show

    def to_dict(self) -> dict[str, Any]:
        ranking = {"ranking": self.ranking.to_dict()} if self.ranking is not None else {}
        return {**self.evaluation.to_dict(), **ranking}


def evaluate_checkpoint(
    loaded: LoadedModel,
    split: str,
    data: str | None = None,
    cutoffs: tuple[int, ...] | None = None,
    relevant: float | None = None,
    sampled: int | None = None,
    baselines: bool = True,
    progress: Progress = silent,
    retrieve: int | None = None,
    sample_users: int | None = None,
) -> EvaluationReport:
    """``evaluate`` on ``split`` (or on every rating of ``data``, a ``--data`` value) and, with ``cutoffs``,
    ``rank_evaluation`` of the split: a held-out rating at or above ``relevant`` (default: 4, or the scale's
    top if lower) makes its item relevant; ``progress`` hears each step."""
    if retrieve is not None and cutoffs is None:
        raise DlrmUsageError("--retrieve goes with --k: it sets how many candidates the two stages rank")
    if sample_users is not None and cutoffs is None:
        raise DlrmUsageError("--sample-users goes with --k: it sets how many held-out users are ranked")
    check_retrieve(loaded, retrieve)
    result = evaluate(loaded, split, source_to_score(loaded, data) if data is not None else None, progress)
    ranking = None
    if cutoffs is not None:
        threshold = relevant if relevant is not None else relevant_rating(loaded.catalog.rating_max)
        ranking = rank_evaluation(
            loaded, split, cutoffs, threshold, sampled, baselines, progress, retrieve, sample_users
        )
    rated = "rating" in loaded.model.config.heads
    return EvaluationReport(result, ranking, loaded.catalog.implicit, rated)
