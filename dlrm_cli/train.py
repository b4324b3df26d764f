"""A training run's life cycle: set up, train epoch by epoch, validate, save."""

from __future__ import annotations

import contextlib
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_cli.config import ModelConfig, TableConfig, TrainConfig
from dlrm_cli.data.catalog import Dataset
from dlrm_cli.distributed import Parallel, bare, build_sharded, full_state, load_full_state, plan_table
from dlrm_cli.errors import DlrmError, DlrmUsageError
from dlrm_cli.metrics import EVAL_BATCH, error_metrics, evaluate_split
from dlrm_cli.model import RatingDLRM, resolve_device
from dlrm_cli.optim import Optimizers, build_for_training
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
        bottom_mlp=(*settings.bottom_mlp, dim),
        top_mlp=tuple(settings.top_mlp),
        rating_min=catalog.rating_min,
        rating_max=catalog.rating_max,
        dropout=settings.dropout,
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


class Interrupted(DlrmError):
    """Training stopped by SIGINT or SIGTERM; the last completed epoch is in the store."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class ResumeFrom:
    """A checkpoint's training state: where ``train(..., resume=...)`` continues."""

    name: str
    meta: dict[str, Any]
    best_state: dict[str, torch.Tensor]
    last: dict[str, Any]


def train(
    dataset: Dataset,
    settings: TrainConfig,
    *,
    store: CheckpointStore,
    name: str | None = None,
    observer: TrainingObserver | None = None,
    resume: ResumeFrom | None = None,
    checkpoint_every: int = 1,
    should_stop: Callable[[], int | None] = lambda: None,
    options: dict[str, Any] | None = None,
    parallel: Parallel | None = None,
    on_plan: Callable[[list[dict[str, Any]]], None] | None = None,
) -> TrainResult:
    """Train a DLRM on ``dataset.train``, validating after each epoch, and save it as checkpoint ``name``.

    Every ``checkpoint_every`` epochs (and at the end) the checkpoint is replaced by one holding the best
    weights so far and the full training state of the last completed epoch, marked incomplete until the
    run ends. ``should_stop`` is polled after each batch; a signal number from it ends the run with
    ``Interrupted`` once the last completed epoch is saved. ``resume`` continues such a checkpoint.

    With ``parallel`` active (under torchrun) the tables are sharded across the ranks, each rank trains on
    its share of every batch, and rank 0 alone reports and writes the checkpoint.
    """
    parallel = parallel or Parallel()
    observer = observer if observer is not None and parallel.is_main else SilentObserver()
    device = resolve_device(settings.device)
    store.ensure_writable()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    catalog, train_rows = dataset.catalog, dataset.train
    config = model_config_for(dataset, settings)
    _check_fits(config)
    if parallel.active:
        model, optimizers, plan = build_sharded(config, settings, device, parallel)
        rows = plan_table(plan)
    else:
        model, optimizers = build_for_training(config, settings, device)
        rows = [{"table": f"t_{t.feature}", "sharding": "unsharded", "ranks": [0]} for t in config.tables]
    if on_plan is not None and parallel.is_main:
        on_plan(rows)
    _start_at_mean(bare(model), dataset.global_mean)

    def weights() -> dict[str, torch.Tensor] | None:
        """Whole CPU copies of the weights (gathered from every rank when distributed; None off rank 0)."""
        return full_state(model, parallel) if parallel.active else _cpu_copy(model.state_dict())

    order = torch.Generator().manual_seed(settings.seed)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val_rmse": math.inf, "epoch": 0}
    first_epoch = 1
    if resume is not None:
        name = resume.name
        if parallel.active:
            load_full_state(model, resume.last["model"])
        else:
            model.load_state_dict(resume.last["model"])
        optimizers.load_state_dict(resume.last["optimizers"], sparse=not parallel.active)
        torch.set_rng_state(resume.last["rng"])
        order.set_state(resume.last["order"])
        history = list(resume.meta["history"])
        best = {
            "val_rmse": resume.last["best_val_rmse"],
            "epoch": resume.last["best_epoch"],
            "state": resume.best_state,
        }
        first_epoch = resume.last["epoch"] + 1

    mean = dataset.global_mean
    baseline = error_metrics(torch.full_like(dataset.validation.rating, mean), dataset.validation.rating)
    floor = None
    if "validation" in dataset.expected:
        floor = error_metrics(dataset.expected["validation"], dataset.validation.rating)
    started = time.perf_counter()
    seconds_before = float(resume.meta.get("seconds", 0.0)) if resume else 0.0

    def save(state: dict[str, Any], complete: bool) -> str | None:
        if not parallel.is_main:
            return name  # rank 0 writes the checkpoint
        meta = {
            "model": config.to_dict(),
            "train": settings.to_dict(),
            "data": dataset.source,
            "features": {"dense": catalog.dense_names, "sparse": [f for f, _ in catalog.sparse_features]},
            "global_mean": mean,
            "counts": {"train": len(dataset.train), "validation": len(dataset.validation), "test": len(dataset.test)},
            "metrics": {
                "validation": {"rmse": state["best_val_rmse"], **state["best_metrics"]},
                "validation_baseline": baseline,
                "validation_noise_floor": floor,
            },
            "history": state["history"],
            "best_epoch": state["best_epoch"],
            "epochs_done": state["epoch"],
            "seconds": seconds_before + time.perf_counter() - started,
            "versions": versions(),
            "complete": complete,
            "processes": parallel.world,
            "options": options if options is not None else (resume.meta.get("options") if resume else None),
        }
        last = {
            key: state[key] for key in ("model", "optimizers", "rng", "order", "epoch", "best_epoch", "best_val_rmse")
        }
        return store.save(
            name=name,
            prefix=str(dataset.source["kind"]),
            meta=meta,
            tensors={"model.pt": state["best_state"], "catalog.pt": catalog.state(), "train_state.pt": last},
            replace=name is not None,
        )

    n, batch_size = len(train_rows), settings.batch_size
    if parallel.active:
        n -= n % batch_size if n % batch_size < parallel.world else 0  # every rank needs a share of each batch
    batches = math.ceil(n / batch_size)
    pending: dict[str, Any] | None = None  # the last completed epoch, when not yet saved
    best_metrics: dict[str, float] = dict(resume.meta["metrics"]["validation"]) if resume else {}
    epoch = first_epoch - 1
    for epoch in range(first_epoch, settings.epochs + 1):
        lr = optimizers.lr
        observer.epoch_started(epoch, settings.epochs, batches, lr)
        model.train()
        epoch_start = time.perf_counter()
        permutation = torch.randperm(len(train_rows), generator=order)[:n]
        loss_sum = torch.zeros((), dtype=torch.float64)
        for batch_index, start in enumerate(range(0, n, batch_size), start=1):
            rows = parallel.share(permutation[start : start + batch_size])
            dense, kjt = catalog.batch(train_rows.user[rows], train_rows.item[rows])
            target = train_rows.rating[rows].to(device)
            value = train_step(
                model, optimizers, dense.to(device), kjt.to(device), target, settings.embedding_l2
            ).item()
            diverged, signal_number = math.isfinite(value) is False, should_stop() or 0
            if parallel.active:  # every rank stops at the same batch, or none does
                diverged, signal_number = bool(parallel.any(int(diverged))), parallel.any(signal_number)
            if diverged:
                saved = save(pending, complete=False) if pending is not None else None
                kept = f"; the last good epoch is saved as {saved}" if saved else ""
                raise DlrmError(
                    f"training diverged: the loss became {value} in epoch {epoch}, batch {batch_index}{kept}; "
                    "try a smaller --lr"
                )
            loss_sum += value * rows.shape[0]
            observer.batch_done(value)
            if signal_number:
                _stop(signal_number, epoch - 1, pending, save if parallel.is_main else None, name)
        optimizers.epoch_done()
        train_seconds = time.perf_counter() - epoch_start
        validation = _validate(model, catalog, dataset.validation, device, parallel)
        record = {
            "epoch": epoch,
            "train_loss": float(parallel.sum(loss_sum)) / n,
            "val_rmse": validation["rmse"],
            "val_mae": validation["mae"],
            "lr": lr,
            "samples_per_s": n / train_seconds,
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)
        if validation["rmse"] < best["val_rmse"]:
            # Model selection on validation rows: the checkpoint keeps the best epoch, not the last.
            best = {"val_rmse": validation["rmse"], "epoch": epoch, "state": weights()}
            best_metrics = validation
        observer.epoch_done(record)
        pending = {
            "model": weights(),
            "optimizers": _cpu_copy(optimizers.state_dict(sparse=not parallel.active)),
            "rng": torch.get_rng_state(),
            "order": order.get_state(),
            "epoch": epoch,
            "history": list(history),
            "best_epoch": best["epoch"],
            "best_val_rmse": best["val_rmse"],
            "best_state": best["state"],
            "best_metrics": best_metrics,
        }
        stopping_early = bool(settings.patience and epoch - best["epoch"] >= settings.patience)
        last_epoch = epoch == settings.epochs or stopping_early
        if last_epoch or epoch % checkpoint_every == 0:
            name = save(pending, complete=last_epoch)
            pending = None
        if stopping_early:
            break  # early stopping: validation has not improved for `patience` epochs
    if pending is not None:  # resumed past the final epoch: nothing ran
        name = save(pending, complete=True)

    seconds = seconds_before + time.perf_counter() - started
    if parallel.active:
        names = [name]
        torch.distributed.broadcast_object_list(names, src=0)
        validation = {"rmse": best["val_rmse"], **best_metrics}
        return TrainResult(names[0], bare(model), history, validation, baseline, floor, seconds, best["epoch"])
    model.load_state_dict(best["state"])
    validation = evaluate_split(model, catalog, dataset.validation, device)
    assert name is not None
    return TrainResult(name, model, history, validation, baseline, floor, seconds, best_epoch=best["epoch"])


def _validate(
    model: nn.Module, catalog: Any, ratings: Any, device: torch.device, parallel: Parallel
) -> dict[str, float]:
    """Validation metrics; distributed, every rank scores its share of each chunk and the sums are reduced."""
    if not parallel.active:
        return evaluate_split(model, catalog, ratings, device)
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # squared error, absolute error, count
    with torch.no_grad():  # fused kernels run only behind autograd on CPU
        for start in range(0, len(ratings), EVAL_BATCH):
            rows = torch.arange(start, min(start + EVAL_BATCH, len(ratings)))
            mine = parallel.share(rows)
            weight = torch.ones(len(mine), dtype=torch.float64)
            if len(mine) == 0:  # fewer rows than ranks: score a stand-in row with no weight
                mine, weight = rows[:1], torch.zeros(1, dtype=torch.float64)
            dense, kjt = catalog.batch(ratings.user[mine], ratings.item[mine])
            diff = model(dense.to(device), kjt.to(device)).double().cpu() - ratings.rating[mine].double()
            sums += torch.stack([(weight * diff**2).sum(), (weight * diff.abs()).sum(), weight.sum()])
    model.train()
    total = parallel.sum(sums)
    mse = float(total[0] / total[2])
    return {"mse": mse, "rmse": mse**0.5, "mae": float(total[1] / total[2])}


def _check_fits(config: ModelConfig) -> None:
    """Refuse, before allocating, a model whose tables and their optimizer state outgrow the memory."""
    from dlrm_cli.data.synthetic import memory_bytes

    rows = sum(table.num_embeddings for table in config.tables)
    need = rows * config.embedding_dim * 4 * 3  # weights, a gradient or Adam's moments, snapshots
    if need > memory_bytes() // 2:
        raise DlrmUsageError(
            f"embedding tables of {rows:,} rows x {config.embedding_dim} would need about {need / 2**30:.1f} GiB; "
            "choose a smaller --embedding-dim"
        )


def _stop(
    signal_number: int, completed: int, pending: dict[str, Any] | None, save: Callable | None, name: str | None
) -> None:
    """Save the last completed epoch (if it is not in the store yet) and end the run."""
    signame = {2: "SIGINT", 15: "SIGTERM"}.get(signal_number, f"signal {signal_number}")
    code = 128 + signal_number
    if pending is not None and save is not None:
        name = save(pending, complete=False)
    if completed == 0 or name is None:
        raise Interrupted(f"interrupted by {signame} before the first epoch finished; nothing was saved", code)
    raise Interrupted(
        f"interrupted by {signame}; epoch {completed} is saved as {name} (incomplete). "
        f"Resume with: dlrm train --resume {name}",
        code,
    )


def load_resume(store: CheckpointStore, ref: str) -> ResumeFrom:
    """The training state of a checkpoint, for ``dlrm train --resume``."""
    checkpoint = store.load(ref)
    if "train_state.pt" not in checkpoint.meta.get("files", {}):
        raise DlrmError(f"checkpoint {checkpoint.name} holds no training state to resume from")
    return ResumeFrom(
        name=checkpoint.name,
        meta=checkpoint.meta,
        best_state=checkpoint.tensors("model.pt"),
        last=checkpoint.tensors("train_state.pt"),
    )


def train_step(
    model: nn.Module,
    optimizers: Optimizers,
    dense: torch.Tensor,
    kjt: KeyedJaggedTensor,
    target: torch.Tensor,
    embedding_l2: float = 0.0,
) -> torch.Tensor:
    """One optimizer step on a batch. The loss lives here, outside the model: mean squared error, plus
    ``embedding_l2`` times the mean squared norm of the embeddings the batch looked up. Returns the MSE."""
    predicted, embedded = model(dense, kjt, with_embeddings=True)
    mse = nn.functional.mse_loss(predicted, target)
    loss = mse + embedding_l2 * embedded.pow(2).sum(dim=(1, 2)).mean() if embedding_l2 else mse
    optimizers.zero_grad()
    loss.backward()
    optimizers.step()
    return mse.detach()


def _cpu_copy(obj: Any) -> Any:
    """A deep copy on the CPU of a (nested) state dict, safe from later in-place updates."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: _cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(value) for value in obj)
    return obj
