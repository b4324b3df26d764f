"""A training run's life cycle: set up, train epoch by epoch, validate, save."""

from __future__ import annotations

import contextlib
import math
import platform
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from dlrm_cli.config import ModelConfig, TableConfig, TrainConfig
from dlrm_cli.data.catalog import Dataset
from dlrm_cli.errors import DlrmError
from dlrm_cli.metrics import error_metrics, evaluate_split
from dlrm_cli.model import RatingDLRM, build_model, resolve_device
from dlrm_cli.store import CheckpointStore


class TrainingObserver(Protocol):
    """What a front end (the rich progress bar, or nothing in tests) hears about a run."""

    def epoch_started(self, epoch: int, epochs: int, batches: int, lr: float) -> None: ...
    def batch_done(self, loss: float) -> None: ...
    def epoch_done(self, record: dict[str, Any]) -> None: ...


class SilentObserver:
    def epoch_started(self, epoch: int, epochs: int, batches: int, lr: float) -> None:
        pass

    def batch_done(self, loss: float) -> None:
        pass

    def epoch_done(self, record: dict[str, Any]) -> None:
        pass


@dataclass
class TrainResult:
    name: str
    model: RatingDLRM
    history: list[dict[str, Any]]
    validation: dict[str, float]
    baseline: dict[str, float]
    noise_floor: dict[str, float] | None
    seconds: float
    best_epoch: int


def model_config_for(dataset: Dataset, settings: TrainConfig) -> ModelConfig:
    """The model's inputs follow from the data: its dense columns and its sparse features."""
    catalog = dataset.catalog
    dim = settings.embedding_dim
    return ModelConfig(
        num_dense=len(catalog.dense_names),
        tables=tuple(TableConfig(name, rows) for name, rows in catalog.sparse_features),
        embedding_dim=dim,
        bottom_mlp=(512, 256, dim),
        top_mlp=(512, 256),
        rating_min=catalog.rating_min,
        rating_max=catalog.rating_max,
    )


def _start_at_mean(model: RatingDLRM, mean: float) -> None:
    """Set the last layer's bias so that an untrained model predicts the training mean, not mid-scale."""
    fraction = (mean - model.rating_min) / model.rating_span
    fraction = min(max(fraction, 1e-3), 1 - 1e-3)
    final = model.dlrm.over_arch.model[-1]
    with torch.no_grad():
        final.bias.fill_(math.log(fraction / (1 - fraction)))


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[package] = md.version(package)
    return found


def train(
    dataset: Dataset,
    settings: TrainConfig,
    *,
    store: CheckpointStore,
    name: str | None = None,
    observer: TrainingObserver | None = None,
) -> TrainResult:
    """Train a DLRM on ``dataset.train``, validate after each epoch, save a checkpoint and return the result."""
    observer = observer or SilentObserver()
    device = resolve_device(settings.device)
    store.ensure_writable()
    torch.manual_seed(settings.seed)
    catalog, train_rows = dataset.catalog, dataset.train
    config = model_config_for(dataset, settings)
    model = build_model(config, device=device)
    _start_at_mean(model, dataset.global_mean)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=settings.lr_gamma)
    loss_fn = nn.MSELoss()
    order = torch.Generator().manual_seed(settings.seed)

    n, batch_size = len(train_rows), settings.batch_size
    batches = math.ceil(n / batch_size)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val_rmse": math.inf}
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        observer.epoch_started(epoch, settings.epochs, batches, lr)
        model.train()
        epoch_start = time.perf_counter()
        permutation = torch.randperm(n, generator=order)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for batch_index, start in enumerate(range(0, n, batch_size), start=1):
            rows = permutation[start : start + batch_size]
            dense, kjt = catalog.batch(train_rows.user[rows], train_rows.item[rows])
            target = train_rows.rating[rows].to(device)
            loss = loss_fn(model(dense.to(device), kjt.to(device)), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                raise DlrmError(
                    f"training diverged: the loss became {value} in epoch {epoch}, batch {batch_index}; "
                    "try a smaller --lr"
                )
            loss_sum += value * rows.shape[0]
            observer.batch_done(value)
        scheduler.step()
        train_seconds = time.perf_counter() - epoch_start
        validation = evaluate_split(model, catalog, dataset.validation, device)
        record = {
            "epoch": epoch,
            "train_loss": float(loss_sum) / n,
            "val_rmse": validation["rmse"],
            "val_mae": validation["mae"],
            "lr": lr,
            "samples_per_s": n / train_seconds,
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)
        if validation["rmse"] < best["val_rmse"]:
            # Model selection on validation rows: the checkpoint keeps the best epoch, not the last.
            best = {"val_rmse": validation["rmse"], "epoch": epoch, "state": _cpu_copy(model)}
        observer.epoch_done(record)
    seconds = time.perf_counter() - started

    model.load_state_dict(best["state"])
    mean = dataset.global_mean
    validation = evaluate_split(model, catalog, dataset.validation, device)
    baseline = error_metrics(torch.full_like(dataset.validation.rating, mean), dataset.validation.rating)
    floor = None
    if "validation" in dataset.expected:
        floor = error_metrics(dataset.expected["validation"], dataset.validation.rating)
    meta = {
        "model": config.to_dict(),
        "train": settings.to_dict(),
        "data": dataset.source,
        "features": {"dense": catalog.dense_names, "sparse": [f for f, _ in catalog.sparse_features]},
        "global_mean": mean,
        "counts": {"train": len(dataset.train), "validation": len(dataset.validation), "test": len(dataset.test)},
        "metrics": {"validation": validation, "validation_baseline": baseline, "validation_noise_floor": floor},
        "history": history,
        "best_epoch": best["epoch"],
        "seconds": seconds,
        "versions": versions(),
        "complete": True,
    }
    saved = store.save(
        name=name,
        prefix=str(dataset.source["kind"]),
        meta=meta,
        tensors={"model.pt": best["state"], "catalog.pt": catalog.state()},
    )
    return TrainResult(saved, model, history, validation, baseline, floor, seconds, best_epoch=best["epoch"])


def _cpu_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
