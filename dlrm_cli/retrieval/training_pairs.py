"""The ranking stage's training pairs, with pair features that no generator computed from the pair itself.

A generator fitted on the same rows scores its own training pairs optimistically, so the rows are split into
``folds`` parts: the generator fitted on the other parts scores each part's users, from their other items.
Each part's liked pairs are the positives; negatives are drawn from each user's top candidates (hard ones,
what the ranker must tell apart at prediction time) and uniformly from the catalogue.

Each pair names the known row whose moment (context columns) it is ranked in: a positive its own row, a
negative one of its user's positives in the part, drawn at random (the moment in which the user picked that
item and passed the negative over). The generators read no context; the rows are for the ranker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dlrm_cli.retrieval.features import pair_features, standing
from dlrm_cli.retrieval.generators import fit_generator, masked_scores
from dlrm_cli.retrieval.history import History, pair_keys

USER_CHUNK = 256


@dataclass(frozen=True)
class TrainingPairs:
    """Pairs for the ranker: user rows, item rows, raw pair features (N x P), labels (1: liked) and the known
    row whose context each pair is ranked in (an index into the rows ``out_of_fold_pairs`` was given)."""

    users: torch.Tensor
    items: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @classmethod
    def concat(cls, parts: list[TrainingPairs]) -> TrainingPairs:
        return cls(
            *(
                torch.cat([getattr(part, name) for part in parts])
                for name in ("users", "items", "features", "labels", "rows")
            )
        )


@dataclass(frozen=True)
class PairSettings:
    """How the ranker's training pairs are drawn."""

    folds: int = 5
    candidates: int = 100  # the top of each user's scores that hard negatives come from
    hard: int = 20  # hard negatives per user and fold
    uniform: int = 20  # uniform negatives per user and fold
    generator: str = "auto"
    seed: int = 0
    # Users whose pairs a fold draws, at most: a uniform sample of the fold's users above it. Each user costs a
    # full ranking of the catalogue (hours a run at MovieLens 25M's 162,541 users). Fewer users do cost the
    # ranker some NDCG (a third of the ML-1M subset's: 0.1843 against 0.1912, docs/scale.md): a bound on time.
    users: int | None = 8000


def out_of_fold_pairs(
    users: torch.Tensor,
    items: torch.Tensor,
    liked: torch.Tensor,
    n_users: int,
    allowed: torch.Tensor,
    settings: PairSettings,
    progress: Callable[[int, int], None] = lambda done, total: None,
    check_stop: Callable[[], None] = lambda: None,
) -> TrainingPairs:
    """Training pairs from known ``(users, items)`` rows, ``liked`` marking those that are positives; only
    ``allowed`` items (I, bool) are drawn as negatives. ``progress(done, folds)`` hears each fold;
    ``check_stop`` (which may raise: a signal) is called between chunks of users."""
    generator = torch.Generator().manual_seed(settings.seed)
    moments = torch.Generator().manual_seed(settings.seed + 1)  # apart, so that the pairs drawn stay the same
    picks = torch.Generator().manual_seed(settings.seed + 2)  # the users of a fold of more than settings.users
    fold = folds_of(users.shape[0], settings, generator)
    n_items = int(allowed.shape[0])
    parts = []
    for k in range(settings.folds):
        held = fold == k
        others = History.of_pairs(users[~held], items[~held], n_users, n_items)
        model = fit_generator(others, settings.generator)
        positive = History.of_pairs(users[held & liked], items[held & liked], n_users, n_items)
        sources = PairRows.of(users, items, held, liked, n_users, n_items, moments)
        part_users = _sample(torch.unique(users[held]), settings.users, picks)
        for start in range(0, len(part_users), USER_CHUNK):
            check_stop()
            chunk = part_users[start : start + USER_CHUNK]
            parts.append(_pairs_of(chunk, others, positive, model, allowed, settings, generator, sources))
        progress(k + 1, settings.folds)
    return TrainingPairs.concat(parts)


@dataclass(frozen=True)
class PairRows:
    """Where one part's pairs take their context: the part's liked rows by (user, item) key, and each user's
    rows that a negative may take (the user's liked rows in the part, or all of its rows there if none)."""

    keys: torch.Tensor  # the liked rows' user * I + item, sorted
    liked: torch.Tensor  # their row indices, in the same order
    offsets: torch.Tensor  # U + 1: user u's rows for negatives are ``pool[offsets[u]:offsets[u + 1]]``
    pool: torch.Tensor
    n_items: int
    generator: torch.Generator  # draws the negatives' rows

    @classmethod
    def of(
        cls,
        users: torch.Tensor,
        items: torch.Tensor,
        held: torch.Tensor,
        liked: torch.Tensor,
        n_users: int,
        n_items: int,
        generator: torch.Generator,
    ) -> PairRows:
        """The rows of the part ``held`` (bool over all rows), ``liked`` marking the positives."""
        users, items = users.long(), items.long()
        positive = torch.nonzero(held & liked).squeeze(1)
        keys, order = torch.sort(pair_keys(users[positive], items[positive], n_items), stable=True)
        has_liked = torch.bincount(users[positive], minlength=n_users) > 0
        pool = torch.nonzero(held & (liked | ~has_liked[users])).squeeze(1)
        pool = pool[torch.argsort(users[pool], stable=True)]
        counts = torch.bincount(users[pool], minlength=n_users)
        offsets = torch.cat((torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)))
        return cls(keys, positive[order], offsets, pool, n_items, generator)

    def rows_of(self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each pair's row: a positive's own (the first of equal ones), a negative's drawn among its user's."""
        found = torch.searchsorted(self.keys, pair_keys(users, items, self.n_items))
        found = found.clamp(max=max(len(self.keys) - 1, 0))
        own = self.liked[found] if len(self.keys) else torch.zeros_like(users)
        start, count = self.offsets[users], self.offsets[users + 1] - self.offsets[users]
        pick = (torch.rand(users.shape, generator=self.generator) * count).long().clamp(max=(count - 1).clamp(min=0))
        return torch.where(labels > 0, own, self.pool[start + pick])


def _sample(part_users: torch.Tensor, most: int | None, generator: torch.Generator) -> torch.Tensor:
    """``most`` of the sorted ``part_users`` drawn uniformly without replacement, still sorted; all if fewer."""
    if most is None or len(part_users) <= most:
        return part_users
    return part_users[torch.randperm(len(part_users), generator=generator)[:most].sort().values]


def folds_of(rows: int, settings: PairSettings, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each known row's fold, drawn at random (the first draw of ``settings.seed``'s generator)."""
    generator = generator or torch.Generator().manual_seed(settings.seed)
    return torch.randint(settings.folds, (rows,), generator=generator)


def _pairs_of(
    chunk: torch.Tensor,
    others: History,
    positive: History,
    model: object,
    allowed: torch.Tensor,
    settings: PairSettings,
    generator: torch.Generator,
    sources: PairRows,
) -> TrainingPairs:
    """One chunk of users' positives, hard negatives and uniform negatives, with their pair features and the
    rows whose context they take (``sources``)."""
    known = others.matrix(chunk)
    scores = masked_scores(model, known, allowed, others.item_counts())  # type: ignore[arg-type]
    wanted = positive.matrix(chunk) > 0
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
    top = order[:, : settings.candidates]
    hard = _draw(~wanted.gather(1, top) & torch.isfinite(scores.gather(1, top)), settings.hard, generator)
    pickable = ~wanted & torch.isfinite(scores)
    uniform = _draw(pickable, settings.uniform, generator)
    rows, columns = [], []
    for mask, cols in ((wanted & torch.isfinite(scores), None), (hard, top), (uniform, None)):
        row, column = torch.nonzero(mask, as_tuple=True)
        rows.append(row)
        columns.append(column if cols is None else cols[row, column])
    row, column = torch.cat(rows), torch.cat(columns)
    mean, std = standing(scores)
    features = pair_features(
        scores[row, column],
        mean[row],
        std[row],
        ranks[row, column],
        others.item_counts()[column],
        others.counts()[chunk[row]],
    )
    labels = wanted[row, column].float()
    users = chunk[row]
    return TrainingPairs(users, column, features, labels, sources.rows_of(users, column, labels))


def _draw(eligible: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """B x C bool: up to ``count`` of each row's eligible slots, drawn uniformly without replacement."""
    noise = torch.rand(eligible.shape, generator=generator).masked_fill(~eligible, 2.0)
    chosen = torch.zeros_like(eligible)
    count = min(count, eligible.shape[1])
    chosen.scatter_(1, torch.topk(noise, count, dim=1, largest=False, sorted=False).indices, True)  # the lowest noise
    return chosen & eligible
