"""Scoring and error metrics, shared by training, evaluate, predict and benchmark."""

from __future__ import annotations

import torch

from dlrm_cli.data.catalog import Catalog, Ratings

EVAL_BATCH = 4096  # larger batches page-fault more than they save (measured: see README, Speed)


def score(
    model: torch.nn.Module,
    catalog: Catalog,
    user_rows: torch.Tensor,
    item_rows: torch.Tensor,
    device: torch.device,
    batch_size: int = EVAL_BATCH,
) -> torch.Tensor:
    """Predicted ratings for each (user, item) pair, as a CPU tensor of size N."""
    was_training = model.training
    model.eval()
    out = []
    # FBGEMM's fused training kernels exist only behind autograd on CPU, so they score under no_grad;
    # everything else uses inference_mode, which skips autograd bookkeeping entirely.
    fused = getattr(model, "uses_fused_kernels", False)
    with torch.no_grad() if fused else torch.inference_mode():
        for start in range(0, user_rows.shape[0], batch_size):
            dense, kjt = catalog.batch(user_rows[start : start + batch_size], item_rows[start : start + batch_size])
            out.append(model(dense.to(device), kjt.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def error_metrics(predicted: torch.Tensor, actual: torch.Tensor) -> dict[str, float]:
    """MSE, RMSE and MAE of predictions against actual ratings."""
    diff = predicted.double() - actual.double()
    mse = float((diff**2).mean())
    return {"mse": mse, "rmse": mse**0.5, "mae": float(diff.abs().mean())}


def evaluate_split(
    model: torch.nn.Module, catalog: Catalog, ratings: Ratings, device: torch.device
) -> dict[str, float]:
    return error_metrics(score(model, catalog, ratings.user, ratings.item, device), ratings.rating)
