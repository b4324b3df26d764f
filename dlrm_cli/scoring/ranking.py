"""Top-K ranking quality: the full-ranking protocol, its metrics, and the baselines measured beside a model.

Protocol (Krichene & Rendle, KDD 2020, argue for full ranking): for each evaluated user, every item seen
in the training part (training and validation rows) is a candidate, minus the items that user rated
there. A held-out rating at or above ``relevant`` makes its item relevant. Users with no relevant held-out
item are skipped and counted. Ties in score are broken by item row, lowest first, so results repeat.

Metrics, averaged over evaluated users, for each cut-off K:
    HitRate@K   1 if any relevant item is in the top K
    Precision@K hits / K
    Recall@K    hits / min(|relevant|, K)
    NDCG@K      sum over hits of 1/log2(rank + 1), over the same sum for a perfect top K
    MAP@K       sum over hits of Precision@rank, over min(|relevant|, K)
    MRR         1 / rank of the first relevant item in the whole ranking (0 if none can be ranked)
    coverage@K  distinct items in all the top-K lists, over the number of candidate items
    cold@K      share of top-K slots given to cold items (fewer than ``COLD_RATINGS`` training ratings)

Scores come from a function of a chunk of user rows that returns a chunk x items tensor, so that a model
and the baselines (most popular, PureSVD, EASE) go through the same code.

Context columns: a user's whole ranking is one moment, while each held-out rating has its own context. A
model with context columns scores all of a user's candidates in the context of that user's first relevant
held-out rating, in the split's row order (``RankingTask.user_context``): the moment at which the user picked
an item that counts as a hit. The baselines read no context.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from dlrm_cli.retrieval.history import History, pair_keys

if TYPE_CHECKING:
    from dlrm_cli.data.catalog import Dataset
    from dlrm_cli.data.context import ContextRows

COLD_RATINGS = 5
USER_CHUNK = 256
Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RankingTask:
    """Who is evaluated, what may be recommended to them, and what counts as a hit."""

    n_users: int
    n_items: int
    known_users: torch.Tensor  # the (user, item) rows of the training part, as two aligned tensors
    known_items: torch.Tensor
    known_ratings: torch.Tensor
    counts: torch.Tensor  # n_items: ratings of each item in the training part
    users: torch.Tensor  # evaluated user rows, ascending
    relevant_users: torch.Tensor  # (user, item) pairs held out with a rating >= the threshold
    relevant_items: torch.Tensor
    skipped: int  # held-out users without a relevant item
    threshold: float
    relevant_context: ContextRows | None = None  # the relevant pairs' contexts (None: no context columns)

    @property
    def candidates(self) -> torch.Tensor:
        """bool, n_items: the items seen in the training part."""
        return self.counts > 0

    @property
    def cold(self) -> torch.Tensor:
        """bool, n_items: the items with fewer than COLD_RATINGS training ratings."""
        return self.counts < COLD_RATINGS

    def user_context(self, users: torch.Tensor) -> ContextRows | None:
        """The context each of ``users`` (some of the task's users) is ranked in, one row each: that of the
        user's first relevant held-out rating; None without context columns."""
        if self.relevant_context is None:
            return None
        order = torch.arange(len(self.relevant_users))
        first = torch.full((self.n_users,), len(order), dtype=torch.long)
        first.scatter_reduce_(0, self.relevant_users, order, "amin")
        return self.relevant_context.take(first[users])

    def relevant_matrix(self, users: torch.Tensor) -> torch.Tensor:
        """chunk x items, True where the item is relevant for the user."""
        return self._matrix(users, self.relevant_users, self.relevant_items)

    def known_matrix(self, users: torch.Tensor) -> torch.Tensor:
        """chunk x items, True where the user rated the item in the training part."""
        return self._matrix(users, self.known_users, self.known_items)

    def _matrix(self, users: torch.Tensor, pair_users: torch.Tensor, pair_items: torch.Tensor) -> torch.Tensor:
        return pairs_matrix(users, pair_users, pair_items, self.n_users, self.n_items)


def pairs_matrix(
    users: torch.Tensor, pair_users: torch.Tensor, pair_items: torch.Tensor, n_users: int, n_items: int
) -> torch.Tensor:
    """users x n_items, True where (user, item) is one of the pairs (``users`` without repeats)."""
    position = torch.full((n_users,), -1, dtype=torch.long)
    position[users] = torch.arange(len(users))
    wanted = position[pair_users]
    keep = wanted >= 0
    matrix = torch.zeros(len(users), n_items, dtype=torch.bool)
    matrix[wanted[keep], pair_items[keep]] = True
    return matrix


def build_task(
    n_users: int,
    n_items: int,
    known: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    held_out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    threshold: float,
    context: ContextRows | None = None,
) -> RankingTask:
    """The task for held-out (user, item, rating) rows against the known (training-part) rows; ``context``:
    the held-out rows' contexts, where the data has context columns."""
    known_users, known_items, known_ratings = known
    held_users, held_items, held_ratings = held_out
    good = held_ratings >= threshold
    relevant_users, relevant_items = held_users[good], held_items[good]
    users = torch.unique(relevant_users)
    return RankingTask(
        n_users=n_users,
        n_items=n_items,
        known_users=known_users,
        known_items=known_items,
        known_ratings=known_ratings.float(),
        counts=torch.bincount(known_items, minlength=n_items),
        users=users,
        relevant_users=relevant_users,
        relevant_items=relevant_items,
        skipped=len(torch.unique(held_users)) - len(users),
        threshold=threshold,
        relevant_context=context.take(torch.nonzero(good).squeeze(1)) if context is not None else None,
    )


def held_out_task(dataset: Dataset, split: str, relevant: float) -> RankingTask:
    """The task of a data set's ``validation`` or ``test`` rows: known pairs are the rows before it (the
    training rows; for the test rows, the training and validation rows), as ``evaluate --k`` ranks them."""
    parts = [dataset.train] if split == "validation" else [dataset.train, dataset.validation]
    known = tuple(torch.cat([getattr(part, name) for part in parts]) for name in ("user", "item", "rating"))
    held = dataset.split(split)
    n_users, n_items = len(dataset.catalog.users) + 1, len(dataset.catalog.items) + 1
    held_out = (held.user, held.item, held.rating)
    return build_task(n_users, n_items, known, held_out, relevant, held.context)  # type: ignore[arg-type]


def sample_users_of(task: RankingTask, count: int, seed: int = 0) -> RankingTask:
    """The task for ``count`` of its users, drawn uniformly without replacement (the same draw every time)."""
    picked = torch.randperm(len(task.users), generator=torch.Generator().manual_seed(seed))[:count]
    return replace(task, users=task.users[torch.sort(picked).values])


@dataclass
class _Sums:
    """Running sums over users of each metric at each K, and the items recommended at each K."""

    ks: tuple[int, ...]
    users: int = 0
    mrr: float = 0.0
    per_k: dict[int, dict[str, float]] = field(default_factory=dict)
    shown: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = ("ndcg", "recall", "precision", "hit_rate", "map", "cold")
        self.per_k = {k: dict.fromkeys(names, 0.0) for k in self.ks}


def rank_metrics(
    task: RankingTask,
    scorer: Scorer,
    ks: tuple[int, ...],
    progress: Callable[[int, int], None] = lambda done, total: None,
    sampled: int | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """Every metric at every K for one scorer over the task's users (in chunks of ``USER_CHUNK``).

    ``sampled``: rank each user's relevant items among that many random other candidates instead of all
    of them (cheaper on huge catalogues, and known to mislead: label such figures as sampled)."""
    generator = torch.Generator().manual_seed(seed)
    if not ks or min(ks) < 1:
        raise ValueError(f"cut-offs must be >= 1, got {ks}")
    sums = _Sums(tuple(sorted(set(ks))))
    sums.shown = {k: torch.zeros(task.n_items, dtype=torch.bool) for k in sums.ks}
    candidates, cold = task.candidates, task.cold
    discounts = 1.0 / torch.log2(torch.arange(2, max(sums.ks) + 2, dtype=torch.float64))
    for start in range(0, len(task.users), USER_CHUNK):
        users = task.users[start : start + USER_CHUNK]
        scores = scorer(users).double()
        blocked = ~candidates[None, :] | task.known_matrix(users)
        relevant = task.relevant_matrix(users)
        if sampled is not None:  # keep the relevant items and ``sampled`` random others
            noise = torch.rand(blocked.shape, generator=generator).masked_fill(blocked | relevant, 2.0)
            kept = torch.zeros_like(blocked)
            lowest = torch.topk(noise, min(sampled, noise.shape[1]), dim=1, largest=False, sorted=False).indices
            kept.scatter_(1, lowest, True)
            blocked = blocked | ~(kept & (noise < 2.0) | relevant)
        scores = scores.masked_fill(blocked | scores.isnan(), -math.inf)  # a NaN score ranks last
        n_relevant = relevant.sum(dim=1)
        order = top_order(scores, max(sums.ks))  # ties: lowest item row first
        rankable = relevant.gather(1, order) & ~blocked.gather(1, order)
        first, found_any = first_hit(scores, relevant & ~blocked)
        sums.mrr += float(torch.where(found_any, 1.0 / (first + 1).double(), 0.0).sum())
        for k in sums.ks:
            top = rankable[:, :k].double()  # fewer than k columns where the catalogue is smaller
            width = top.shape[1]
            found = top.sum(dim=1)
            ideal = torch.clamp(n_relevant, max=k)
            dcg = (top * discounts[:width]).sum(dim=1)
            idcg = torch.cumsum(discounts[:k], 0)[ideal - 1]
            precision_at = torch.cumsum(top, dim=1) / torch.arange(1, width + 1, dtype=torch.float64)
            metrics = sums.per_k[k]
            metrics["ndcg"] += float((dcg / idcg).sum())
            metrics["recall"] += float((found / ideal).sum())
            metrics["precision"] += float((found / k).sum())
            metrics["hit_rate"] += float((found > 0).double().sum())
            metrics["map"] += float(((precision_at * top).sum(dim=1) / ideal).sum())
            shown = order[:, :k][~blocked.gather(1, order[:, :k])]
            metrics["cold"] += float(cold[shown].double().sum()) / k
            sums.shown[k][shown] = True
        sums.users += len(users)
        progress(sums.users, len(task.users))
    n = max(sums.users, 1)
    result: dict[str, object] = {"users": sums.users, "mrr": sums.mrr / n}
    for k in sums.ks:
        figures = {name: value / n for name, value in sums.per_k[k].items()}
        figures["coverage"] = int(sums.shown[k].sum()) / max(int(candidates.sum()), 1)
        result[f"@{k}"] = figures
    return result


def top_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` columns of each row's order by descending score, ties by lowest column (the first ``k``
    of a stable ``argsort(-scores)``), without sorting whole rows: the k-th largest score is found by a
    partial selection, and only the columns above it, and the lowest-numbered of those equal to it, are
    sorted. B x min(k, columns)."""
    k = min(k, scores.shape[1])
    kth = torch.topk(scores, k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
    above = scores > kth
    level = scores == kth
    room = k - above.sum(dim=1, keepdim=True)  # how many of the tied columns make the cut
    chosen = above | (level & (torch.cumsum(level, dim=1) <= room))
    columns = chosen.nonzero()[:, 1].view(scores.shape[0], k)  # each row's k chosen columns, ascending
    ranked = torch.argsort(-scores.gather(1, columns), dim=1, stable=True)
    return columns.gather(1, ranked)


def first_hit(scores: torch.Tensor, hits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's position of its first hit in the order ``top_order`` gives (every column above it, and the
    lower-numbered columns tied with it, come first), and whether it has one."""
    best = scores.masked_fill(~hits, -math.inf).max(dim=1, keepdim=True).values
    columns = torch.arange(scores.shape[1], device=scores.device)
    tied_hit = hits & (scores == best)
    first_column = torch.where(tied_hit, columns, scores.shape[1]).min(dim=1, keepdim=True).values
    before = (scores > best) | ((scores == best) & (columns < first_column))
    return before.sum(dim=1), hits.any(dim=1)


# Baselines -----------------------------------------------------------------------------------------


def most_popular(task: RankingTask) -> Scorer:
    """Every user gets the items with the most training ratings."""
    counts = task.counts.double()
    return lambda users: counts.expand(len(users), -1)


def _known(task: RankingTask) -> tuple[History, torch.Tensor]:
    """The task's known pairs as a ``History``, and each pair's rating (a pair known twice: its last rating)."""
    keys = pair_keys(task.known_users, task.known_items, task.n_items)
    order = torch.argsort(keys, stable=True)
    keys = keys[order]
    last = torch.ones_like(keys, dtype=torch.bool)
    last[:-1] = keys[1:] != keys[:-1]  # each distinct pair once, ascending: the history's own order
    return History.of_keys(keys[last], task.n_users, task.n_items), task.known_ratings[order][last].float()


def pure_svd(task: RankingTask, factors: int = 50, seed: int = 0) -> Scorer:
    """PureSVD (Cremonesi et al., RecSys 2010): the rating matrix, missing as 0, projected on its top
    ``factors`` right singular vectors; a user's scores are r_u V V^T."""
    history, ratings = _known(task)
    matrix = history.sparse(ratings)  # never dense: users x items would not fit at large catalogues
    with torch.random.fork_rng(devices=[]):  # the CPU's draws only: the fit runs there
        torch.manual_seed(seed)
        q = min(factors + 10, min(matrix.shape))  # oversampled: the top ``factors`` come out as exact ones
        _, _, v = torch.svd_lowrank(matrix, q=q, niter=8)
    v = v[:, :factors].contiguous()
    return lambda users: (history.matrix(users, ratings) @ v) @ v.T


def ease(task: RankingTask, regularisation: float = 500.0) -> Scorer:
    """EASE (Steck, WWW 2019): item-item weights B from the closed form with a zero diagonal, on the
    binary interaction matrix X; a user's scores are x_u B (the retrieval stage's own ``Ease``)."""
    from dlrm_cli.retrieval.generators import Ease

    history = History.of_pairs(task.known_users, task.known_items, task.n_users, task.n_items)
    fitted = Ease.fit(history, regularisation)
    return lambda users: fitted.scores(history.matrix(users))


EASE = "EASE λ=500"
BASELINES: dict[str, Callable[[RankingTask], Scorer]] = {
    "most popular": most_popular,
    "PureSVD-50": pure_svd,
    EASE: ease,
}


def usable_baselines(task: RankingTask) -> tuple[dict[str, Callable[[RankingTask], Scorer]], dict[str, str]]:
    """The baselines this task's catalogue allows, and why any other is left out: EASE keeps an items x items
    matrix, so it ranks up to the retrieval stage's own limit of items."""
    from dlrm_cli.retrieval.generators import EASE_MAX_ITEMS

    usable, left_out = dict(BASELINES), {}
    if task.n_items > EASE_MAX_ITEMS:
        del usable[EASE]
        size = task.n_items**2 * 8 / 2**30
        left_out[EASE] = (
            f"not ranked: its items x items matrix of {task.n_items:,} item rows would take {size:.0f} GiB "
            f"(EASE ranks up to {EASE_MAX_ITEMS:,} items)"
        )
    return usable, left_out
