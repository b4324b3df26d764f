"""Scoring and error metrics, shared by training, evaluate, predict and benchmark."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dlrm_cli.data.catalog import Catalog, Ratings
from dlrm_cli.data.context import ContextRows

EVAL_BATCH = 4096  # larger batches page-fault more than they save (measured: see docs/benchmarks.md)


def score(
    model: torch.nn.Module,
    catalog: Catalog,
    user_rows: torch.Tensor,
    item_rows: torch.Tensor,
    device: torch.device,
    batch_size: int = EVAL_BATCH,
    ranking: bool = False,
    context: ContextRows | None = None,
) -> torch.Tensor:
    """Predicted ratings for each (user, item) pair, as a CPU tensor of size N; with ``ranking``, the scores
    that rank items (``RatingDLRM.ranking_scores``). ``context``: each pair's context (N rows), or one row for
    every pair, or None (each context column at its default)."""
    call = model.ranking_scores if ranking else model.predict
    return _in_batches(
        model, lambda dense, kjt: (call(dense, kjt),), catalog, user_rows, item_rows, device, batch_size, context
    )[0]


def score_heads(
    model: torch.nn.Module,
    catalog: Catalog,
    user_rows: torch.Tensor,
    item_rows: torch.Tensor,
    device: torch.device,
    context: ContextRows | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted ratings and the ranking scores of each pair, from one pass of the model
    (``RatingDLRM.rating_and_ranking``); ``context`` as ``score``'s."""
    call = model.rating_and_ranking
    ratings, ranking = _in_batches(model, call, catalog, user_rows, item_rows, device, EVAL_BATCH, context)
    return ratings, ranking


def _in_batches(
    model: torch.nn.Module,
    call: Callable[[torch.Tensor, Any], tuple[torch.Tensor, ...]],
    catalog: Catalog,
    user_rows: torch.Tensor,
    item_rows: torch.Tensor,
    device: torch.device,
    batch_size: int,
    context: ContextRows | None = None,
) -> list[torch.Tensor]:
    """``call(dense, kjt)``'s outputs for the pairs, in batches of ``batch_size``, each as a CPU tensor of
    size N."""
    was_training = model.training
    model.eval()
    out: list[tuple[torch.Tensor, ...]] = []
    # FBGEMM's fused training kernels exist only behind autograd on CPU, so they score under no_grad;
    # everything else uses inference_mode, which skips autograd bookkeeping entirely.
    fused = getattr(model, "uses_fused_kernels", False)
    with torch.no_grad() if fused else torch.inference_mode():
        for start in range(0, user_rows.shape[0], batch_size):
            users, items = user_rows[start : start + batch_size], item_rows[start : start + batch_size]
            ctx = context_slice(context, start, users.shape[0])
            dense, kjt = catalog.batch(users, items, context=ctx)
            out.append(tuple(part.float().cpu() for part in call(dense.to(device), kjt.to(device))))
    model.train(was_training)
    if not out:
        return [torch.empty(0), torch.empty(0)]
    return [torch.cat(parts) for parts in zip(*out, strict=True)]


def score_grid(
    model: torch.nn.Module,
    catalog: Catalog,
    user_rows: torch.Tensor,
    item_rows: torch.Tensor,
    device: torch.device,
    context: ContextRows | None = None,
) -> torch.Tensor:
    """The ranking score (``RatingDLRM.ranking_scores``) of every item row for every user row: users x items;
    ``context``: one row that every pair shares, one row per user row (each user's items scored in it), or
    None (each column at its default)."""
    pairs_users = user_rows.repeat_interleave(len(item_rows))
    pairs_items = item_rows.repeat(len(user_rows))
    if context is not None and len(context) > 1:
        if len(context) != len(user_rows):
            raise ValueError(f"{len(context)} contexts for {len(user_rows)} users: give one, or one per user")
        context = context.take(torch.arange(len(user_rows)).repeat_interleave(len(item_rows)))
    predicted = score(model, catalog, pairs_users, pairs_items, device, ranking=True, context=context)
    return predicted.view(len(user_rows), len(item_rows))


def candidate_scorer(
    model: torch.nn.Module, catalog: Catalog, task: Any, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A scorer for ``dlrm_cli.scoring.ranking.rank_metrics``: the ranking scores of a ``RankingTask``'s candidate
    items for a chunk of users (-inf for the other items), each user's in its context (``task.user_context``:
    that of the user's first relevant held-out rating)."""
    candidates = torch.nonzero(task.candidates).squeeze(1)

    def scorer(users: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(users), task.n_items), float("-inf"))
        context = task.user_context(users)
        out[:, candidates] = score_grid(model, catalog, users, candidates, device, context=context)
        return out

    return scorer


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """The area under the ROC curve: the chance that a positive outscores a negative, ties counting half
    (the Mann-Whitney statistic, from average ranks)."""
    scores = torch.cat((positive, negative)).double()
    ranks = torch.empty_like(scores)
    ranks[torch.argsort(scores, stable=True)] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    _, tie, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    ranks = (torch.zeros(len(counts), dtype=torch.float64).index_add_(0, tie, ranks) / counts)[tie]
    p, n = len(positive), len(negative)
    return float((ranks[:p].sum() - p * (p + 1) / 2) / (p * n))


def classification_metrics(positive: torch.Tensor, negative: torch.Tensor) -> dict[str, float]:
    """AUC and log loss of ranking logits on held-out interactions (label 1) and sampled negatives (0)."""
    logits = torch.cat((positive, negative)).double()
    labels = torch.cat((torch.ones(len(positive)), torch.zeros(len(negative)))).double()
    log_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    return {"auc": auc(positive, negative), "log_loss": float(log_loss)}


def error_metrics(predicted: torch.Tensor, actual: torch.Tensor) -> dict[str, float]:
    """MSE, RMSE and MAE of predictions against actual ratings."""
    diff = predicted.double() - actual.double()
    mse = float((diff**2).mean())
    return {"mse": mse, "rmse": mse**0.5, "mae": float(diff.abs().mean())}


def evaluate_split(
    model: torch.nn.Module, catalog: Catalog, ratings: Ratings, device: torch.device
) -> dict[str, float]:
    predicted = score(model, catalog, ratings.user, ratings.item, device, context=ratings.context)
    return error_metrics(predicted, ratings.rating)


def context_slice(context: ContextRows | None, start: int, size: int) -> ContextRows | None:
    """The context of ``size`` pairs from ``start`` of a call: their own rows, or the one row that every pair
    of the call shares."""
    if context is None:
        return None
    if len(context) == 1:
        return context.expand(size)
    return context.take(torch.arange(start, start + size))
