"""What a run tells its user: each epoch's validation figures as text, a ranking objective with almost nothing
to learn from (before training), and a run that ended while validation was still improving (after it). Each
warning is one line that names the option to change; the CLI prints them, the API returns them with the
result. Nothing here imports torch: the CLI's display reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlrm_cli.config import TrainConfig, relevant_rating, store_root

FEW_POSITIVES = 100  # fewer positive training pairs than this, or under MIN_POSITIVE_SHARE of them, is too few
MIN_POSITIVE_SHARE = 0.01
STILL_IMPROVING = 1e-3  # the last epoch improved on the one before by more than this share: not converged
SPENT_RATE = 0.01  # a learning rate decayed below this share of --lr moves the weights too little to matter


# The validation figures an epoch may have (a ranking-only model has no RMSE; a rating-only one no NDCG).
VALIDATION_COLUMNS = (("val_rmse", "val RMSE"), ("val_mae", "val MAE"), ("val_ndcg", "val NDCG@10"))


def validation_figures(record: dict[str, Any]) -> str:
    """``val RMSE 0.8471, val MAE 0.6658`` (and ``val NDCG@10 ...``): an epoch's validation figures."""
    return ", ".join(f"{label} {record[key]:.4f}" for key, label in VALIDATION_COLUMNS if key in record)


def positives_warning(dataset: Any, settings: TrainConfig, task: Any | None) -> str | None:
    """For a run with a ranking head: a warning when too few training pairs are positives (the pairs a
    user liked, with ``--positives liked``), or when no validation user has a relevant item, so that
    validation NDCG@10 is zero at every epoch and cannot choose the best one."""
    if task is None:
        return None
    relevant = relevant_rating(dataset.catalog.rating_max)
    train = dataset.train
    liked = settings.positives == "liked" and not dataset.catalog.implicit
    positives = int((train.rating >= relevant).sum()) if liked else len(train)
    kind = f"rated {relevant:g} or above" if liked else "interactions"
    if len(task.users) == 0:
        return (
            f"no validation user has an item rated {relevant:g} or above, so validation NDCG@10 will be 0 at "
            "every epoch and cannot choose the best one: train a rating model (--objective rating) or give "
            "the data more positive rows"
        )
    if positives < FEW_POSITIVES or positives < MIN_POSITIVE_SHARE * len(train):
        advice = " (--positives all counts every rated pair)" if liked else ""
        return (
            f"only {positives:,} of {len(train):,} training pairs are positives ({kind}): the ranking head has "
            f"little to learn from, and its NDCG@10 may stay near 0{advice}"
        )
    return None


def store_option(root: Path) -> str:
    """`` --store ROOT`` where a command run as it stands would use another store, else ""."""
    return "" if root.resolve() == store_root().resolve() else f" --store {root}"


def run_advice(
    history: list[dict[str, float]],
    best_epoch: int,
    stopped_early: bool,
    settings: TrainConfig,
    name: str,
    store: str = "",
) -> list[str]:
    """Lines for a run that ended at ``--epochs`` on its best epoch: still improving (more epochs would likely
    help), or with a learning rate decayed too far to matter (more epochs would not: a slower decay would).
    ``store``: what the resume command needs to find the store (``store_option``)."""
    if stopped_early or len(history) < 2 or best_epoch != int(history[-1]["epoch"]):
        return []
    key, better = ("val_rmse", -1.0) if "val_rmse" in history[-1] else ("val_ndcg", 1.0)
    last, before = history[-1][key], history[-2][key]
    gain = better * (last - before) / max(abs(before), 1e-12)
    figure = "RMSE" if key == "val_rmse" else "NDCG@10"
    epochs = int(history[-1]["epoch"])
    lines = []
    rate = history[-1]["lr"]
    if rate < SPENT_RATE * settings.lr:
        slower = "a --lr-gamma nearer 1"
        if settings.lr_schedule == "step":
            slower = f"--lr-schedule plateau, which decays it only when validation stops improving, or {slower}"
        lines.append(
            f"The run ended on its best epoch with the learning rate decayed to {rate:.1e} "
            f"({rate / settings.lr:.1%} of --lr {settings.lr:g}), too little to move the weights: the model is "
            f"likely under-fitted; train again with a slower decay ({slower})"
        )
    elif gain > STILL_IMPROVING:
        lines.append(
            f"Validation {figure} was still improving at the last epoch ({before:.4f} → {last:.4f}): the model "
            f"is likely under-fitted; train further with: dlrm train --resume {name} --epochs {2 * epochs}{store}"
        )
    return lines
