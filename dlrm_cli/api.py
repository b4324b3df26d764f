"""The Python API: a checkpoint loaded once, answering many questions.

Example::

    from dlrm_cli import load, train

    model = train(frame, user_col="customer", epochs=3)  # a DataFrame, a file or a --data spec; see train()
    model = load("ml1m")                       # a checkpoint name, "latest" or "best"
    model.predict(42, [101, 102]).items[0]     # RankedItem(item='102', title=..., rating=4.31, unseen=False)
    model.recommend(42, top=10).ranking.items  # the 10 best items the user has not rated
    model.score([42, 42], [101, 102])          # tensor([3.97, 4.31]): ratings in the order asked
    model.predict(42, [101], context={"channel": "app"})  # a model with context columns (model.context_columns)

The command line and ``dlrm serve`` answer through the same functions (``dlrm_cli.scoring.recommending``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlrm_cli.config import store_root
from dlrm_cli.data.catalog import EntityTable
from dlrm_cli.errors import DlrmUsageError
from dlrm_cli.retrieval.history import History
from dlrm_cli.scoring.explain import explain_ranking
from dlrm_cli.scoring.metrics import score
from dlrm_cli.scoring.recommending import (
    Query,
    Ranking,
    Recommendation,
    answer,
    entity_rows,
    joined_context,
    predict_query,
    query_context,
    rank_items,
    recommend,
    recommend_query,
)
from dlrm_cli.store.loading import LoadedModel, open_model

Id = int | str
Context = Mapping[str, Any]  # a context column's name -> its value (a number, or a categorical value as text)


@dataclass(frozen=True)
class ContextColumn:
    """One context column of a model: ``kind`` is ``numeric`` or ``categorical``; ``default`` is the value it
    takes when a question does not give it (the training mean, or the most frequent training value)."""

    name: str
    kind: str
    default: float | str


def load(checkpoint: str = "latest", store: str | Path | None = None, device: str = "cpu") -> Model:
    """The checkpoint ``checkpoint`` of the store at ``store`` (default: $DLRM_CHECKPOINT_DIR, else
    ./checkpoints), ready to answer on ``device`` (``cpu``, ``cuda`` or ``auto``).

    The model names the checkpoint it loaded (``model.name``; ``repr(model)`` says which alias chose it).
    Raises ``dlrm_cli.errors.DlrmError`` (a one-line message) for a missing or corrupt checkpoint."""
    return Model(open_model(store_root(store), checkpoint, device), asked=checkpoint)


def train(
    data: Any = "synthetic",
    *,
    name: str | None = None,
    store: str | Path | None = None,
    progress: bool = False,
    **options: Any,
) -> Model:
    """Train a DLRM as ``dlrm train`` does, save it as a checkpoint and return it loaded.

    ``data``: a pandas DataFrame, a CSV file or MovieLens folder, or a ``--data`` spec (``synthetic``,
    ``csv:FILE``, ``movielens:DIR``). A DataFrame is written once to ``STORE/.data/frame-HASH.csv`` (HASH: of
    its CSV bytes) and trained from there, exactly as ``csv:FILE``, so that ``evaluate`` and ``report`` read
    it later. ``options``: ``dlrm train``'s options with underscores (``epochs=3``, ``lr=1e-3``,
    ``user_col="customer"``, ``dense_cols=["price"]``). ``name``: the checkpoint's (default DATA-DATE-TIME);
    ``store``: as ``load``.
    ``progress``: print the data and each epoch on stderr (default: quiet).

    Raises ``DlrmUsageError`` for an unknown option, a bad value, an empty DataFrame or a column it lacks
    (messages name options as the command line spells them); ``DlrmError`` for data that cannot be read or
    a run that fails."""
    from dlrm_cli.store.checkpoints import CheckpointStore
    from dlrm_cli.training.request import (
        check_new_name,
        data_option,
        prepare,
        python_options,
        request_from_options,
    )
    from dlrm_cli.training.run import train as run

    root = store_root(store)
    values, given = python_options(options)
    if name is not None:  # before a DataFrame is written into the store
        check_new_name(CheckpointStore(root), name)
    values["data"] = data_option(data, root, values)
    request = prepare(request_from_options(values, given, given, store=root, name=name))
    observer = _EpochLines() if progress else _Notices()
    try:
        result = run(request, observer=observer)
    finally:  # the warnings of a run that failed too
        for line in observer.notices:
            warnings.warn(line, UserWarning, stacklevel=3)
    assert result is not None  # a single process is rank 0
    for line in result.advice:  # what the command line prints as notes
        warnings.warn(line, UserWarning, stacklevel=2)
    return Model(open_model(root, result.name, request.config.train.device), asked=result.name)


class _Notices:
    """``train()``'s quiet observer: it keeps the run's warnings (``notice``), which ``train`` issues as
    Python warnings, and ignores every other event."""

    def __init__(self) -> None:
        self.notices: list[str] = []

    def __getattr__(self, name: str) -> Any:  # the events it does not report
        return lambda *args: None

    def notice(self, text: str) -> None:
        self.notices.append(text)


class _EpochLines(_Notices):
    """``train(progress=True)``: a line on stderr when the data is loaded, after each epoch and when a second
    stage starts."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = ""

    def notice(self, text: str) -> None:
        super().notice(text)
        _say(f"Warning: {text}")

    def data_loaded(self, dataset: Any, processes: int) -> None:
        sizes = (len(dataset.train), len(dataset.validation), len(dataset.test))
        _say("Data: {:,} train, {:,} validation, {:,} test rows".format(*sizes))

    def epoch_done(self, record: dict[str, float]) -> None:
        from dlrm_cli.training.advice import validation_figures

        figures = validation_figures(record)
        _say(f"{self.stage}epoch {record['epoch']}: train loss {record['train_loss']:.4f}, {figures}")

    def stage_started(self, description: str) -> None:
        self.stage = "ranker "
        _say(description)

    def step_done(self, label: str, done: int, total: int) -> None:
        _say(f"{label}: {done}/{total}")


def _say(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


class Model:
    """A loaded checkpoint. Ids may be given as ints or strings, as they appear in the data; a number for a
    model whose ids are strings must name a known id (else it is an error, not a silent cold start)."""

    def __init__(self, loaded: LoadedModel, asked: str | None = None) -> None:
        self.loaded = loaded
        self.loaded_at = time.time()
        self.asked = asked  # the name or alias it was loaded by

    def __repr__(self) -> str:
        chosen = f" ({self.asked})" if self.asked not in (None, self.name) else ""
        heads = "+".join(self.loaded.model.config.heads)
        names = list(self.context_columns)
        context = f", context {', '.join(names)}" if 0 < len(names) <= 4 else ""
        context = context or (f", {len(names)} context columns" if names else "")
        return f"<dlrm Model {self.name}{chosen}: {heads}{context}, from {self.loaded.checkpoint.path.parent}>"

    @property
    def name(self) -> str:
        return self.loaded.checkpoint.name

    @property
    def meta(self) -> dict[str, Any]:
        """The checkpoint's record: its run settings, metrics and history."""
        return self.loaded.meta

    @property
    def context_columns(self) -> dict[str, ContextColumn]:
        """The model's context columns by name (empty for a model without any): what ``context=`` takes."""
        table = self.loaded.catalog.context
        if table is None:
            return {}
        kinds = {name: "numeric" for name in table.dense} | {name: "categorical" for name in table.vocabularies}
        return {name: ContextColumn(name, kinds[name], table.defaults[name]) for name in table.names}

    @property
    def seen(self) -> History:
        """The items each user rated in training, kept in the checkpoint (read from it on first use)."""
        return self.loaded.known.seen

    def predict_query(self, user: Id, items: Sequence[Id], context: Context | None = None) -> Query:
        """``predict``'s question, checked (unknown ids: see ``recommending.predict_query``) but not yet scored."""
        catalog = self.loaded.catalog
        users, wanted = _ids(catalog.users, [user]), _ids(catalog.items, items)
        return predict_query(self.loaded, users[0], wanted, _context(context))

    def recommend_query(
        self,
        user: Id,
        top: int = 10,
        exclude_seen: bool = True,
        retrieve: int | None = None,
        context: Context | None = None,
    ) -> Query:
        """``recommend``'s question, checked but not yet scored (a two-stage checkpoint retrieves and ranks here)."""
        user_id = _ids(self.loaded.catalog.users, [user])[0]
        return recommend_query(self.loaded, user_id, top, exclude_seen, retrieve, _context(context))

    def answer(self, queries: list[Query]) -> list[Ranking]:
        """Rankings for many queries, scored together in one pass of the model."""
        return answer(self.loaded, queries)

    def predict(self, user: Id, items: Sequence[Id], context: Context | None = None) -> Ranking:
        """``items`` ranked best first by ``user``'s predicted rating, as ``dlrm predict`` shows them.
        ``context``: for a model with context columns, the moment asked about (``{"channel": "app"}``); a
        column not given takes its default (``context_columns``). A column the model lacks is a
        ``DlrmUsageError``, as is any context for a model without context columns."""
        catalog = self.loaded.catalog
        users, wanted = _ids(catalog.users, [user]), _ids(catalog.items, items)
        return rank_items(self.loaded, users[0], wanted, _context(context))

    def recommend(
        self,
        user: Id,
        top: int = 10,
        exclude_seen: bool = True,
        retrieve: int | None = None,
        explain: bool = False,
        context: Context | None = None,
    ) -> Recommendation:
        """The ``top`` items of the catalogue for ``user``, as ``dlrm recommend`` shows them (a two-stage
        checkpoint: ``retrieve`` candidates, default as trained, chosen without the context and ordered by its
        ranker in it). ``explain``: each item's ``because`` names the user's training items that drove it most
        (``dlrm_cli.scoring.explain``). ``context``: as ``predict``'s."""
        user_id = _ids(self.loaded.catalog.users, [user])[0]
        return recommend(self.loaded, user_id, top, exclude_seen, retrieve, explain=explain, context=_context(context))

    def explain(self, ranking: Ranking) -> Ranking:
        """``ranking`` with each item's ``because`` (see ``recommend``)."""
        return explain_ranking(self.loaded, ranking)

    def score(
        self, users: Sequence[Id], items: Sequence[Id], context: Context | Sequence[Context] | None = None
    ) -> torch.Tensor:
        """Predicted ratings of (users[i], items[i]) pairs, in the order given (unknown ids: as ``predict``).
        ``context``: one mapping that every pair shares, or a list of them, one per pair (see ``predict``)."""
        if len(users) != len(items):
            raise ValueError(f"{len(users)} users and {len(items)} items: give one user per item")
        catalog = self.loaded.catalog
        user_rows = entity_rows(catalog.users, _ids(catalog.users, users))
        item_rows = entity_rows(catalog.items, _ids(catalog.items, items))
        rows = self._pairs_context(context, len(users))
        return score(self.loaded.model, catalog, user_rows, item_rows, self.loaded.device, context=rows)

    def _pairs_context(self, context: Context | Sequence[Context] | None, pairs: int) -> Any:
        """``score``'s context as model inputs: one row that every pair shares, N rows, or None."""
        if context is None or isinstance(context, Mapping):
            moment = query_context(self.loaded, _context(context))
            return moment.rows if moment is not None else None
        if isinstance(context, str | bytes) or not isinstance(context, Sequence):
            raise DlrmUsageError(f"context takes a mapping or a list of them, got {type(context).__name__}")
        if len(context) != pairs:
            raise DlrmUsageError(f"{len(context)} contexts for {pairs} pairs: give one per pair, or one mapping")
        moments = [query_context(self.loaded, _context(each)) for each in context]
        if not moments or moments[0] is None:
            return None
        return joined_context([moment.rows for moment in moments])  # type: ignore[union-attr]


def _context(context: Context | None) -> dict[str, Any] | None:
    """A query's context, checked to be a mapping."""
    if context is None:
        return None
    if not isinstance(context, Mapping):
        raise DlrmUsageError(f"context takes a mapping of column to value, got {type(context).__name__}")
    return dict(context)


def _ids(table: EntityTable, values: Sequence[Id]) -> list[str]:
    """Ids as the catalog looks them up. A number given to a model whose ids are strings must be a known id
    (say "42" and "42" is looked up): otherwise it would silently be scored as a stranger."""
    ids = [str(value) for value in values]
    if not table.integer_ids and len(table.keys):
        numbers = [text for value, text in zip(values, ids, strict=True) if isinstance(value, int | float)]
        _, unknown = table.lookup(numbers) if numbers else (None, [])
        if unknown:
            raise DlrmUsageError(
                f"{table.kind} id {unknown[0]} was given as a number, but this model's {table.kind} ids are "
                f"strings such as {str(table.keys[0])!r}: send it as a string"
            )
    return ids
