"""The second half of a two-stage run: after the main model, fit the candidate generator and train a DLRM
ranker over its candidates.

1. Training pairs out of fold (``dlrm_cli.retrieval.training_pairs``): the generator that computes a pair's
   retrieval features never saw the pair. Fresh negatives each epoch, so that the ranker cannot learn them by
   heart.
2. The ranker: the run's DLRM with a ranking head, the pair features beside the user's and the item's dense
   ones and the context columns (each pair in the moment of its training row, ``TrainingPairs.rows``), binary
   cross-entropy; each epoch is judged by the two stages' NDCG@10 on validation users (the generator fitted
   on the training rows; each user ranked in the context of its first relevant validation rating), and the
   best one is kept.
3. The generator refitted on the training and validation rows, with the users' known items, for the checkpoint.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import nn

from dlrm_cli.config import ModelConfig, TrainConfig, relevant_rating
from dlrm_cli.data.catalog import Dataset, Ratings
from dlrm_cli.model.dlrm import pool_bags
from dlrm_cli.model.optim import build_for_training
from dlrm_cli.retrieval.features import PAIR_FEATURES, FeatureScale
from dlrm_cli.retrieval.generators import EASE_MAX_ITEMS, fit_generator
from dlrm_cli.retrieval.history import History
from dlrm_cli.retrieval.training_pairs import PairSettings, TrainingPairs, out_of_fold_pairs
from dlrm_cli.retrieval.two_stage import Ranked, TwoStage
from dlrm_cli.scoring.ranking import RankingTask, rank_metrics
from dlrm_cli.training.bag_cache import BagCache, training_batch

RANKER_EPOCHS = 2
RANKER_BATCH = 512
# The ranker's own settings over the run's (chosen on validation NDCG@10 of the MovieLens 1M subset): one pass
# over fresh pairs is where it peaks; later ones fit the training pairs at the expense of new ones.
RANKER = {
    "lr": 1e-3,
    "lr_schedule": "step",
    "lr_step": 1,
    "lr_gamma": 0.6,
    "sparse_lr": 0.05,
    "embedding_l2": 3e-3,
    "objective": "ranking",
    "ensemble": 1,  # one ranker, whatever the main model's ensemble
}
PAIRS = PairSettings(folds=5, hard=20, uniform=60)
BLENDS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # the generator's weight in the final order; 1: the generator alone


@dataclass
class Stages:
    """What a two-stage run adds to its checkpoint."""

    two_stage: TwoStage  # the generator refitted on training and validation rows, and the trained ranker
    ranker_config: ModelConfig
    metrics: dict[str, float]  # validation NDCG@10 of the generator alone and of the two stages
    history: list[dict[str, float]]
    seconds: float

    def tensors(self) -> dict[str, Any]:
        """The checkpoint's files for the two stages."""
        stage = self.two_stage
        retrieval = {
            "generator": stage.generator.state(),
            "history": stage.history.state(),
            "allowed": stage.allowed,
            "scale": {"mean": stage.scale.mean, "std": stage.scale.std},
        }
        weights = {key: value.detach().cpu().clone() for key, value in stage.ranker.state_dict().items()}
        return {"retrieval.pt": retrieval, "ranker.pt": weights}

    def record(self) -> dict[str, Any]:
        """The two stages in the checkpoint's metadata."""
        return {
            "generator": self.two_stage.generator.kind,
            "candidates": self.two_stage.candidates,
            "blend": self.two_stage.blend,
            "ranker": self.ranker_config.to_dict(),
            "pair_features": list(PAIR_FEATURES),
            "metrics": self.metrics,
            "history": self.history,
            "seconds": self.seconds,
        }


def stage_description(settings: TrainConfig, items: int) -> str:
    kind = settings.retrieval if settings.retrieval != "auto" else ("ease" if items <= EASE_MAX_ITEMS else "svd")
    generator = {"ease": "EASE", "svd": "PureSVD"}[kind]
    return f"Ranking stage: {generator} proposes {settings.retrieve} candidates per user; a DLRM ranker orders them"


def train_stages(
    dataset: Dataset,
    settings: TrainConfig,
    task: RankingTask,
    observer: Any,
    model_config_for: Callable[[Dataset, TrainConfig], ModelConfig],
    check_stop: Callable[[], None] = lambda: None,
) -> Stages | None:
    """Fit the generator and train the ranker on ``dataset`` (its catalog as the main model reads it), judged on
    the validation ``task``; ``observer`` hears each epoch as the main run's do; ``check_stop`` may raise
    between batches (a signal). None when the data leaves the ranker nothing to learn."""
    started = time.perf_counter()
    ranker_settings = replace(settings, **RANKER)
    catalog = dataset.catalog if ranker_settings.bags else dataset.catalog.without_bags()
    config = model_config_for(replace(dataset, catalog=catalog), ranker_settings)
    config = replace(config, num_dense=config.num_dense + len(PAIR_FEATURES))
    torch.manual_seed(settings.seed)
    model, optimizers = build_for_training(config, ranker_settings, torch.device("cpu"))
    judge = _two_stage(dataset.train.user, dataset.train.item, catalog, model, settings)
    alone = _ndcg(task, judge.generator_scores)
    ranking = _ranking_scorer(task, judge)
    cache = _bag_cache(model, catalog, ranker_settings)  # built once, its sums read afresh each epoch
    best: tuple[float, int, Any] = (-1.0, 0, None)
    history = []
    for epoch in range(1, RANKER_EPOCHS + 1):
        drawn = partial(observer.step_done, f"ranker epoch {epoch}/{RANKER_EPOCHS}: training pairs, folds drawn")
        pairs = _pairs(
            dataset, judge, replace(PAIRS, candidates=settings.retrieve, seed=settings.seed + epoch), drawn, check_stop
        )
        if epoch == 1:
            if len(pairs) == 0 or pairs.labels.min() == pairs.labels.max():
                return None  # no user has both an item to like and one to pass over: nothing to rank
            judge.scale = FeatureScale.of(pairs.features)
        record = _epoch(
            model, optimizers, pairs, dataset.train, judge, ranker_settings, cache, epoch, observer, check_stop
        )
        with _pooled(judge, model, catalog):
            record["val_ndcg"] = _ndcg(task, ranking)
        history.append(record)
        observer.epoch_done(record)
        if record["val_ndcg"] > best[0]:
            best = (record["val_ndcg"], epoch, copy.deepcopy(model.state_dict()))
        elif epoch > best[1]:
            break
    model.load_state_dict(best[2])
    with _pooled(judge, model, catalog):
        blend, blends = _choose_blend(task, judge)
    parts = (dataset.train, dataset.validation)
    users, items = torch.cat([part.user for part in parts]), torch.cat([part.item for part in parts])
    final = _two_stage(users, items, catalog, model.eval(), settings, judge.scale)
    final.blend = blend
    metrics = {"generator_ndcg": alone, "ranker_ndcg": best[0], "ndcg": blends[blend], "blend": blend}
    metrics["best_epoch"] = float(best[1])
    return Stages(final, config, metrics, history, time.perf_counter() - started)


@contextmanager
def _pooled(judge: TwoStage, model: nn.Module, catalog: Any) -> Iterator[None]:
    """The judge's ranker scores with each bag pooled once per entity (``pool_bags``), as the checkpoint's
    ranker will, instead of pooling an item's whole bag for every user it is a candidate for."""
    judge.ranker, judge.catalog = pool_bags(model, catalog)
    try:
        yield
    finally:
        judge.ranker, judge.catalog = model, catalog


def _ranking_scorer(task: RankingTask, judge: TwoStage) -> Callable[[torch.Tensor], torch.Tensor]:
    """The two stages' scores of validation users, each user's candidates in the user's context."""
    return lambda users: judge.full_scores(users, context=task.user_context(users))


def _choose_blend(task: RankingTask, judge: TwoStage) -> tuple[float, dict[float, float]]:
    """The weight of the generator's z-score beside the ranker's logit that ranks the validation users best
    (the smallest of equals), and every weight's NDCG@10. The ranker scores each user's candidates once, in
    the user's context."""
    memo: dict[tuple[int, ...], Ranked] = {}

    def scorer(blend: float) -> Callable[[torch.Tensor], torch.Tensor]:
        def scores(users: torch.Tensor) -> torch.Tensor:
            key = tuple(users.tolist())
            if key not in memo:  # only the candidates' order reaches NDCG@10: the other items stay tied
                memo[key] = judge.ranked(users, keep_scores=False, context=task.user_context(users))
            return judge.spread(memo[key], blend)

        return scores

    found = {blend: _ndcg(task, scorer(blend)) for blend in BLENDS}
    return max(found, key=lambda blend: (found[blend], -blend)), found


def _two_stage(
    users: torch.Tensor,
    items: torch.Tensor,
    catalog: Any,
    ranker: nn.Module,
    settings: TrainConfig,
    scale: FeatureScale | None = None,
) -> TwoStage:
    """The two stages with the generator fitted on the known (``users``, ``items``) pairs."""
    n_users, n_items = len(catalog.users) + 1, len(catalog.items) + 1
    history = History.of_pairs(users, items, n_users, n_items)
    unit = FeatureScale(torch.zeros(len(PAIR_FEATURES)), torch.ones(len(PAIR_FEATURES)))
    allowed = history.item_counts() > 0
    generator = fit_generator(history, settings.retrieval)
    return TwoStage(generator, history, allowed, ranker, catalog, scale or unit, settings.retrieve)


def _pairs(
    dataset: Dataset,
    judge: TwoStage,
    settings: PairSettings,
    progress: Callable[[int, int], None],
    check_stop: Callable[[], None],
) -> TrainingPairs:
    train, catalog = dataset.train, judge.catalog
    liked = train.rating >= relevant_rating(catalog.rating_max)
    generator = replace(settings, generator=judge.generator.kind)
    n_users = judge.history.n_users
    return out_of_fold_pairs(train.user, train.item, liked, n_users, judge.allowed, generator, progress, check_stop)


def _ndcg(task: RankingTask, scorer: Callable[[torch.Tensor], torch.Tensor]) -> float:
    return float(rank_metrics(task, scorer, (10,))["@10"]["ndcg"])  # type: ignore[index]


def _epoch(
    model: nn.Module,
    optimizers: Any,
    pairs: TrainingPairs,
    known: Ratings,
    judge: TwoStage,
    settings: TrainConfig,
    cache: BagCache | None,
    epoch: int,
    observer: Any,
    check_stop: Callable[[], None],
) -> dict[str, float]:
    """One pass over the epoch's pairs, each in the context of its row of ``known`` (the rows the pairs were
    built from); returns its history record (without validation). ``cache``: the ranker's bag cache with
    ``--heavy-bags`` (its sums read afresh at the start, its last gradient applied at the end)."""
    batches = (len(pairs) + RANKER_BATCH - 1) // RANKER_BATCH
    observer.epoch_started(epoch, RANKER_EPOCHS, batches, optimizers.lr)
    order = torch.randperm(len(pairs))
    features = judge.scale.apply(pairs.features)
    model.train()
    if cache is not None:
        cache.start()
    started, total = time.perf_counter(), 0.0
    for start in range(0, len(pairs), RANKER_BATCH):
        rows = order[start : start + RANKER_BATCH]
        users, items, context = pairs.users[rows], pairs.items[rows], known.context_of(pairs.rows[rows])
        dense, kjt, cached = training_batch(
            judge.catalog, cache, users, items, pair_dense=features[rows], context=context
        )
        logits, embedded = model(dense, kjt, None, cached) if cached else model(dense, kjt)
        loss = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], pairs.labels[rows])
        fitted = float(loss.detach())
        if settings.embedding_l2:
            loss = loss + settings.embedding_l2 * embedded.pow(2).sum(dim=(1, 2)).mean()
        optimizers.zero_grad()
        loss.backward()
        optimizers.step()
        if cache is not None:
            cache.step_done()
        total += fitted * len(rows)
        observer.batch_done(fitted)
        check_stop()
    if cache is not None:
        cache.flush()  # the epoch's last gradient, before the epoch is judged
    lr = optimizers.lr
    optimizers.epoch_done()
    seconds = time.perf_counter() - started
    rate = len(pairs) / max(seconds, 1e-9)
    return {"epoch": epoch, "train_loss": total / max(len(pairs), 1), "lr": lr, "samples_per_s": rate}


def _bag_cache(model: nn.Module, catalog: Any, settings: TrainConfig) -> BagCache | None:
    """The ranker's heavy bags read from a cache of their pooled sums, as the main model's are, with
    ``--heavy-bags`` (and where the ranker has bags at all), refreshed after as many training pairs as the main
    model's: every ``bag_refresh`` of its batches of ``batch_size``, in the ranker's batches of ``RANKER_BATCH``."""
    if settings.heavy_bags is None or not any(table.bags for table in (catalog.users, catalog.items)):
        return None
    refresh = max(1, round(settings.bag_refresh * settings.batch_size / RANKER_BATCH))
    return BagCache(model, catalog, settings.heavy_bags, refresh)
