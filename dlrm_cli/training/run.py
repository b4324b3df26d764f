"""A training run's life cycle, in the order it happens::

    run = TrainingRun(request, observer=progress)
    run.setup()      # join the ranks, load the data, build the model, restore a resumed run's state
    run.train()      # for each epoch: run_epoch (which validates), save_checkpoint when due
    run.cleanup()    # leave the process group

``train(request)`` does exactly that, and names the failing rank when one of several fails. The run
owns resume, interruption (Ctrl-C and SIGTERM save the last completed epoch), rank coordination and the
checkpoint's metadata. A front end hears about it through a ``TrainingObserver``; tests inject failures
through ``Faults``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_cli.config import (
    RELEVANT_RATING,
    ModelConfig,
    RunConfig,
    SyntheticSpec,
    TableConfig,
    TrainConfig,
    relevant_rating,
)
from dlrm_cli.data.catalog import Catalog, Dataset, with_bags
from dlrm_cli.data.context import ContextRows
from dlrm_cli.data.sources import load_dataset
from dlrm_cli.errors import DataChanged, DlrmError, DlrmUsageError, Interrupted
from dlrm_cli.model.dlrm import RatingDLRM, build_model, pool_bags, resolve_device, table_name, to_rating
from dlrm_cli.model.optim import Optimizers, build_for_training
from dlrm_cli.retrieval.generators import check_generator
from dlrm_cli.runtime.memory import RANK_PEAK, peak_resident_gib
from dlrm_cli.runtime.quiet import quiet_library_logs
from dlrm_cli.runtime.threads import ThreadGovernor, chosen_threads, take_charge
from dlrm_cli.scoring.metrics import EVAL_BATCH, candidate_scorer, error_metrics, evaluate_split
from dlrm_cli.store.checkpoints import CheckpointStore
from dlrm_cli.store.known import KNOWN_FILE, Known
from dlrm_cli.training import distributed
from dlrm_cli.training.advice import positives_warning, run_advice, store_option
from dlrm_cli.training.bag_cache import BagCache, training_batch
from dlrm_cli.training.distributed import Parallel, Shard
from dlrm_cli.training.request import TrainRequest
from dlrm_cli.training.signals import StopOnSignal
from dlrm_cli.training.stages import Stages, stage_description, train_stages


class TrainingObserver(Protocol):
    """What a front end (the rich progress display, or nothing) hears about a run. Only rank 0 speaks."""

    def data_loading(self) -> None: ...
    def data_loaded(self, dataset: Dataset, processes: int) -> None: ...
    def resumed(self, name: str, epoch: int) -> None: ...
    def planned(self, shards: list[Shard]) -> None: ...
    def epoch_started(self, epoch: int, epochs: int, batches: int, lr: float) -> None: ...
    def batch_done(self, loss: float) -> None: ...
    def epoch_done(self, record: dict[str, float]) -> None: ...
    def stage_started(self, description: str) -> None: ...
    def step_done(self, label: str, done: int, total: int) -> None: ...
    def notice(self, text: str) -> None: ...


class SilentObserver:
    """Hears everything, says nothing: tests, scripts and the ranks other than 0."""

    def data_loading(self) -> None:
        pass

    def data_loaded(self, dataset: Dataset, processes: int) -> None:
        pass

    def resumed(self, name: str, epoch: int) -> None:
        pass

    def planned(self, shards: list[Shard]) -> None:
        pass

    def epoch_started(self, epoch: int, epochs: int, batches: int, lr: float) -> None:
        pass

    def batch_done(self, loss: float) -> None:
        pass

    def epoch_done(self, record: dict[str, float]) -> None:
        pass

    def stage_started(self, description: str) -> None:
        pass

    def step_done(self, label: str, done: int, total: int) -> None:
        pass

    def notice(self, text: str) -> None:
        pass


def _nothing(*args: object) -> None:
    return None


@dataclass(frozen=True)
class Faults:
    """Failures a test injects, as callables; a real run leaves them empty. ``on_setup`` runs on every
    rank once it has joined; ``before_publish`` runs with each finished checkpoint folder before it is
    renamed into the store."""

    on_setup: Callable[[Parallel], None] = _nothing
    before_publish: Callable[[Path], None] = _nothing


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports: its checkpoint, its history and the best epoch's validation metrics."""

    name: str
    history: list[dict[str, float]]
    validation: dict[str, float]
    baseline: dict[str, float]
    noise_floor: dict[str, float] | None
    seconds: float
    best_epoch: int
    stopped_early: int | None = None  # the --patience that ended the run before its last epoch, if it did
    stages: dict[str, float] | None = None  # a two-stage run's validation NDCG@10: generator alone, two stages
    advice: list[str] = field(default_factory=list)  # lines for a run that ended still improving (``run_advice``)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainResult:
        return cls(**raw)


@dataclass
class Best:
    """The best epoch so far by validation RMSE, or by validation NDCG@10 for a model with only a ranking
    head: the checkpoint serves its weights, not the last epoch's. A model with both heads is chosen by
    its rating head, so that its ratings are as good as a rating-only model's; its ranking head comes
    along (the ranking head alone peaks later: see docs/ranking.md)."""

    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # the validation metrics (``TrainingRun.validate``)
    weights: dict[str, torch.Tensor] | None = None

    @property
    def rmse(self) -> float:
        return self.metrics.get("rmse", math.inf)

    def beaten_by(self, metrics: dict[str, float]) -> bool:
        if "rmse" not in metrics:
            return metrics["ndcg"] > self.metrics.get("ndcg", -math.inf)
        return metrics["rmse"] < self.rmse


@dataclass
class EpochState:
    """A completed epoch as the store will hold it: what resuming needs, and the best weights so far."""

    epoch: int
    weights: dict[str, torch.Tensor] | None
    optimizers: dict[str, Any]
    rng: torch.Tensor
    order: torch.Tensor
    history: list[dict[str, float]]
    best: Best

    def resume_state(self) -> dict[str, Any]:
        """The ``train_state.pt`` file (its layout is shared by checkpoint formats 1 to 3)."""
        return {
            "model": self.weights,
            "optimizers": self.optimizers,
            "rng": self.rng,
            "order": self.order,
            "epoch": self.epoch,
            "best_epoch": self.best.epoch,
        }


def train(
    request: TrainRequest, *, observer: TrainingObserver | None = None, faults: Faults | None = None
) -> TrainResult | None:
    """Run ``request`` (already ``prepare``d) in this process: the whole run, or under torchrun one rank of
    it. Returns the result on rank 0 and None on the other ranks."""
    run = TrainingRun(request, observer=observer, faults=faults)
    try:
        run.setup()
        result = run.train()
        distributed.leave(clean=True)  # the ranks are done; rank 0 trains the second stage alone
        result = run.second_stage(result)
    except DlrmError as error:
        run.cleanup(failed=True)
        raise run.blame(error) from None
    except BaseException:
        run.cleanup(failed=True)
        raise
    run.cleanup()
    return result


class TrainingRun:
    """One training run: see the module's docstring for its life cycle."""

    def __init__(
        self, request: TrainRequest, *, observer: TrainingObserver | None = None, faults: Faults | None = None
    ) -> None:
        self.request = request
        self.settings: TrainConfig = request.config.train
        self.store = CheckpointStore(request.store)
        self.name = request.resume or request.name
        self.observer: TrainingObserver = observer or SilentObserver()
        self.faults = faults or Faults()
        self.parallel = Parallel()
        self.history: list[dict[str, float]] = []
        self.best = Best()
        self.first_epoch = 1
        self.pending: EpochState | None = None  # the last completed epoch, until it is saved
        self.seconds_before = 0.0
        self.governor: ThreadGovernor | None = None  # None when the thread count is fixed
        self.published = request.resume is not None  # whether the checkpoint self.name is this run's
        self.saved: EpochState | None = None  # the epoch last written to the store
        self.claimed: str | None = None
        self._stop_requested: Callable[[], int | None] = _nothing
        self._signals: StopOnSignal | None = None
        self.bag_cache: BagCache | None = None  # with --heavy-bags

    # Setting up ------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Join the ranks, load the data, build the model and its optimizers, and restore a resumed run."""
        self.parallel = distributed.join() if distributed.launched_by_torchrun() else Parallel()
        if not self.parallel.is_main:
            self.observer = SilentObserver()
        self.faults.on_setup(self.parallel)
        self.store.ensure_writable()
        if self.parallel.is_main and self.name is not None:
            self.store.claim(self.name)  # two runs started together with one name: the second stops here
            self.claimed = self.name
            if not self.published and self.store.exists(self.name):
                raise DlrmUsageError(
                    f"checkpoint {self.name} already exists in {self.store.root}; choose another --name"
                )
        self.device = resolve_device(self.settings.device)
        self.observer.data_loading()
        try:
            self.dataset = load_dataset(self.request.config.data)
        except DataChanged:
            where = getattr(self.request.config.data, "path", "")
            raise DataChanged(
                f"the data at {where} has changed since checkpoint {self.name} was trained, and a run resumes "
                "only on the data it started on: restore those files, or train a new run on the new ones "
                "(without --resume)"
            ) from None
        self.dataset = training_data(self.dataset, self.settings)
        try:  # recorded resolved: a resumed run, and --print-config of its record, say what it trained
            self.settings = replace(self.settings, objective=self.settings.objective_for(self.dataset.catalog.implicit))
            check_generator(self.settings.retrieval, len(self.dataset.catalog.items))
        except ValueError as error:
            raise DlrmUsageError(str(error)) from None
        self.negatives = NegativeSampler.for_run(self.dataset, self.settings)
        self.ranking_task = validation_ranking_task(self.dataset) if self.negatives is not None else None
        self.observer.data_loaded(self.dataset, self.parallel.world)
        warning = positives_warning(self.dataset, self.settings, self.ranking_task)
        if warning is not None:
            self.observer.notice(warning)
        resume = load_resume(self.store, self.request.resume) if self.request.resume else None
        if resume is not None:
            self.observer.resumed(resume.name, resume.last["epoch"])
        self._build_model()
        if resume is not None:
            self._restore(resume)
        if self.settings.heavy_bags is not None:
            if self.parallel.active:
                raise DlrmUsageError("--heavy-bags trains in one process: drop it or --nproc-per-node")
            train = self.dataset.train  # its pairs' weights found once, for every batch of the run
            self.bag_cache = BagCache(
                distributed.bare(self.model), self.dataset.catalog, self.settings.heavy_bags,
                self.settings.bag_refresh, (train.user, train.item),
            )  # fmt: skip
        validation = self.dataset.validation
        self.baseline = error_metrics(torch.full_like(validation.rating, self.dataset.global_mean), validation.rating)
        expected = self.dataset.expected.get("validation")
        self.noise_floor = error_metrics(expected, validation.rating) if expected is not None else None
        rows = len(self.dataset.train)
        if self.parallel.active:  # every rank needs a share of each batch
            rows -= rows % self.settings.batch_size if rows % self.settings.batch_size < self.parallel.world else 0
        self.rows_per_epoch = rows
        self.batches = math.ceil(rows / self.settings.batch_size)

    def _build_model(self) -> None:
        settings = self.settings
        if self.device.type == "cpu" or chosen_threads(settings.threads):  # on CUDA, only a fixed count applies
            self.governor = take_charge(settings.threads)
        torch.manual_seed(settings.seed)
        self.model_config = model_config_for(self.dataset, settings)
        _check_fits(self.model_config)
        if self.parallel.active:
            with quiet_library_logs():
                self.model, self.optimizers, plan = distributed.build_sharded(
                    self.model_config, settings, self.device, self.parallel
                )
            shards = distributed.plan_table(plan)
        else:
            self.model, self.optimizers = build_for_training(self.model_config, settings, self.device)
            shards = [Shard(table_name(table.feature), "unsharded", (0,)) for table in self.model_config.tables]
        self.observer.planned(shards)
        self.objective = Objective.of(self.model_config, settings, relevant_rating(self.dataset.catalog.rating_max))
        user_side = self.dataset.catalog.user_side
        features = self.model_config.feature_names
        positions = [index for index, name in enumerate(features) if name in user_side]
        self.user_side = torch.tensor(positions, device=self.device)
        start = self.dataset.global_mean if self.model_config.heads[0] == "rating" else 1 / (1 + settings.negatives)
        distributed.bare(self.model).start_at(start)
        self.order = torch.Generator().manual_seed(settings.seed)

    def _restore(self, resume: ResumeFrom) -> None:
        last = resume.last
        if self.parallel.active:
            distributed.load_full_state(self.model, last["model"])
        else:
            self.model.load_state_dict(last["model"])
        self.optimizers.load_state_dict(last["optimizers"], sparse=not self.parallel.active)
        torch.set_rng_state(last["rng"])
        self.order.set_state(last["order"])
        self.history = list(resume.meta["history"])
        metrics = dict(resume.meta["metrics"]["validation"])
        self.best = Best(last["best_epoch"], metrics, resume.best_state)
        self.first_epoch = last["epoch"] + 1
        self.seconds_before = float(resume.meta.get("seconds", 0.0))

    # Training --------------------------------------------------------------------------------------
    def train(self) -> TrainResult | None:
        """Train the remaining epochs, saving the checkpoint when due and at the end; stop early after
        ``patience`` epochs without a better validation RMSE. Returns the result on rank 0."""
        self.started = time.perf_counter()
        with StopOnSignal() as signals:
            self._stop_requested, self._signals = signals.requested, signals
            for epoch in range(self.first_epoch, self.settings.epochs + 1):
                self.run_epoch(epoch)
                patience = self.settings.patience
                stopping_early = bool(patience and epoch - self.best.epoch >= patience)
                last = stopping_early or epoch == self.settings.epochs
                if last or epoch % self.settings.checkpoint_every == 0:
                    self.save_checkpoint(complete=last)
                    if not last:
                        self._check_signal(completed=epoch)  # one that came while it saved
                if stopping_early:
                    break
            self._signals = None
        return self._result()

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training rows, then validation; returns the epoch's history record."""
        settings, train_rows = self.settings, self.dataset.train
        lr = self.optimizers.lr
        self.observer.epoch_started(epoch, settings.epochs, self.batches, lr)
        self.model.train()
        started = time.perf_counter()
        permutation = torch.randperm(len(train_rows), generator=self.order)[: self.rows_per_epoch]
        loss_sum = torch.zeros((), dtype=torch.float64)
        if self.bag_cache is not None:
            self.bag_cache.start()
        for batch, start in enumerate(range(0, self.rows_per_epoch, settings.batch_size), start=1):
            rows = self.parallel.share(permutation[start : start + settings.batch_size])
            step = functools.partial(
                self._step, train_rows.user[rows], train_rows.item[rows], train_rows.rating[rows],
                train_rows.context_of(rows), rows,
            )  # fmt: skip
            loss = self.governor.timed(step, len(rows)) if self.governor is not None else step()
            self._check_batch(loss, epoch, batch)
            loss_sum += loss * rows.shape[0]
            self.observer.batch_done(loss)
        if self.bag_cache is not None:
            self.bag_cache.flush()  # the epoch's last gradient, before its weights are scored and saved
        train_seconds = time.perf_counter() - started
        weights = self._weights()  # the epoch's whole weights: a collective when distributed (None off rank 0)
        validation = self.validate(weights)
        self.optimizers.epoch_done(validation["rmse"] if "rmse" in validation else -validation["ndcg"])
        record = {
            "epoch": epoch,
            "train_loss": float(self.parallel.sum(loss_sum)) / self.rows_per_epoch,
            **{f"val_{name}": validation[name] for name in ("rmse", "mae", "ndcg") if name in validation},
            "lr": lr,
            "samples_per_s": self.rows_per_epoch / train_seconds,
            "seconds": time.perf_counter() - started,
        }
        if self.parallel.active:  # what each rank holds: the tables' shards, its share of the data
            peaks = self.parallel.gathered(peak_resident_gib())
            record.update({f"{RANK_PEAK}{rank}": peak for rank, peak in enumerate(peaks)})
        self._epoch_done(record, validation, weights)
        return record

    def _step(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        ratings: torch.Tensor,
        context: ContextRows | None = None,
        rows: torch.Tensor | None = None,
    ) -> float:
        """One optimizer step on the training pairs at ``rows`` (their users, items, ratings and context)."""
        catalog, borrow, rated = self.dataset.catalog, None, None
        if self.negatives is not None:  # the rated pairs first, then each user's sampled negatives
            rows = None  # (so the batch is more than the pairs at rows)
            users, items = self.negatives.extend(users, items)
            rated = ratings.shape[0]  # the negatives borrow their user's features from these pairs
            borrow = (self.user_side, rated)
            if context is not None:  # and their moment: a negative is an item not picked in that context
                context = context.take(torch.arange(users.shape[0]) % rated)
        dense, kjt, cached = training_batch(
            catalog, self.bag_cache, users, items, rows, user_side_rows=rated, context=context
        )
        loss = train_step(
            self.model,
            self.optimizers,
            dense.to(self.device),
            kjt.to(self.device),
            ratings.to(self.device),
            self.settings.embedding_l2,
            self.objective,
            borrow,
            cached,
        ).item()
        if self.bag_cache is not None:
            self.bag_cache.step_done()
        return loss

    def _check_signal(self, completed: int) -> None:
        """Stop now if a signal came (on any rank); every rank calls this at the same point."""
        signal_number = self._stop_requested() or 0
        if self.parallel.active:
            signal_number = self.parallel.any(signal_number)
        if signal_number:
            self._interrupt(signal_number, completed=completed)

    def _check_batch(self, loss: float, epoch: int, batch: int) -> None:
        """Stop on a diverged loss or a signal; with several ranks, all stop at the same batch or none."""
        diverged = not math.isfinite(loss)
        if self.parallel.active:
            diverged = bool(self.parallel.any(int(diverged)))
        if diverged:
            saved = self.save_checkpoint(complete=False) if self.pending is not None else None
            kept = f"; the last good epoch is saved as {saved}" if saved else ""
            raise DlrmError(
                f"training diverged: the loss became {loss} in epoch {epoch}, batch {batch}{kept}; try a smaller --lr"
            )
        self._check_signal(completed=epoch - 1)

    def _interrupt(self, signal_number: int, completed: int) -> None:
        """Save the last completed epoch (if it is not in the store yet) and end the run."""
        signame = {2: "SIGINT", 15: "SIGTERM"}.get(signal_number, f"signal {signal_number}")
        code = 128 + signal_number
        if self.pending is not None:
            self.save_checkpoint(complete=False)
        if completed == 0 or self.name is None:
            raise Interrupted(f"interrupted by {signame} before the first epoch finished; nothing was saved", code)
        raise Interrupted(
            f"interrupted by {signame}; epoch {completed} is saved as {self.name} (incomplete). "
            f"Resume with: dlrm train --resume {self.name}",
            code,
        )

    def validate(self, weights: dict[str, torch.Tensor] | None) -> dict[str, float]:
        """MSE, RMSE and MAE on the validation rows (with several ranks, each scores a share); with a
        ranking head, also NDCG@10 (``ndcg``) over the validation users' full rankings. ``weights``: the
        whole model (``_weights``), which ranks the users when the run has several ranks."""
        metrics: dict[str, float] = {}
        # one process: each bag pooled once per entity for the pass, not once per rating (as evaluate scores)
        pooled = None if self.parallel.active else pool_bags(distributed.bare(self.model), self.dataset.catalog)
        if "rating" in self.model_config.heads:
            if pooled is not None:
                metrics = evaluate_split(*pooled, self.dataset.validation, self.device)
            else:  # each rank scores a share with its shards, every bag whole
                metrics = _validate_shared(self.model, self.dataset, self.device, self.parallel)
        if self.ranking_task is not None:
            metrics["ndcg"] = self._validation_ndcg(weights, pooled)
        return metrics

    def _validation_ndcg(
        self, weights: dict[str, torch.Tensor] | None, pooled: tuple[RatingDLRM, Catalog] | None
    ) -> float:
        """NDCG@10 of the ranking head on the validation users (one process: ``pooled``, the model and catalog
        with their bags pooled, from ``validate``). With several ranks, rank 0 ranks them with the whole model
        (``weights``, gathered from the shards) and shares the figure, so that every rank keeps the same best
        epoch and stops at the same one."""
        catalog, task = self.dataset.catalog, self.ranking_task
        if pooled is not None:
            return validation_ndcg(*pooled, task, self.device)
        value = torch.zeros(1, dtype=torch.float64)
        if weights is not None:
            whole = build_model(self.model_config)
            whole.load_state_dict(weights)
            value[0] = validation_ndcg(*pool_bags(whole.eval(), catalog), task, torch.device("cpu"))
        return float(self.parallel.sum(value))

    def _epoch_done(
        self, record: dict[str, float], validation: dict[str, float], weights: dict[str, torch.Tensor] | None
    ) -> None:
        self.history.append(record)
        if self.best.beaten_by(validation):
            self.best = Best(int(record["epoch"]), validation, weights)
        self.observer.epoch_done(record)
        self.pending = EpochState(
            epoch=int(record["epoch"]),
            weights=weights,
            optimizers=_cpu_copy(self.optimizers.state_dict(sparse=not self.parallel.active)),
            rng=torch.get_rng_state(),
            order=self.order.get_state(),
            history=list(self.history),
            best=self.best,
        )

    def _weights(self) -> dict[str, torch.Tensor] | None:
        """Whole CPU copies of the weights (gathered from every rank when distributed; None off rank 0)."""
        if self.parallel.active:
            return distributed.full_state(self.model, self.parallel)
        return _cpu_copy(self.model.state_dict())

    # Saving ----------------------------------------------------------------------------------------
    @functools.cached_property
    def known(self) -> Known:
        """What the checkpoint keeps of the data so that it serves without it (built on the first save)."""
        return Known.of(self.dataset)

    def save_checkpoint(self, *, complete: bool) -> str | None:
        """Write the last completed epoch into the run's checkpoint (created on the first save, replaced
        after that) and return its name. Rank 0 writes; the other ranks only forget the epoch."""
        state, self.pending = self.pending, None
        if state is None or not self.parallel.is_main:
            return self.name
        with self._signals.deferred() if self._signals is not None else contextlib.nullcontext():
            self.name = self._save(state, complete)
        self.published, self.saved = True, state
        return self.name

    def _save(self, state: EpochState, complete: bool, stages: Stages | None = None) -> str:
        tensors = {
            "model.pt": state.best.weights,
            "catalog.pt": self.dataset.catalog.state(),
            "train_state.pt": state.resume_state(),
            KNOWN_FILE: self.known.state(),
        }
        meta = self._meta(state, complete)
        if stages is not None:
            tensors.update(stages.tensors())
            meta["stages"] = stages.record()
        return self.store.save(
            name=self.name,
            prefix=self.dataset.source.kind,
            meta=meta,
            tensors=tensors,
            replace=self.published,
            before_publish=self.faults.before_publish,
        )

    # The second stage ----------------------------------------------------------------------------
    def second_stage(self, result: TrainResult | None) -> TrainResult | None:
        """Fit the candidate generator and train the ranker over its candidates (``dlrm_cli.training.stages``),
        then save them into the run's checkpoint beside the main model; on rank 0, for a run that asks for
        two stages and saved its main model."""
        kind = self.settings.retrieval
        synthetic = isinstance(self.request.config.data, SyntheticSpec)  # who rates what is random there
        if result is None or kind == "none" or (kind == "auto" and synthetic) or self.saved is None:
            return result
        task = self.ranking_task or validation_ranking_task(self.dataset)
        if len(task.users) == 0:  # nothing to judge a ranker on: the main model alone recommends
            return result
        self.observer.stage_started(stage_description(self.settings, len(self.dataset.catalog.items)))
        with StopOnSignal() as signals:
            check = functools.partial(self._stage_signal, signals)
            self.bag_cache = None  # the main model's cache, no longer needed beside the ranker's
            stages = train_stages(self.dataset, self.settings, task, self.observer, model_config_for, check)
            if stages is None:
                self.observer.stage_started("Ranking stage left out: no user has items both to pick and to pass over")
                return result
            with signals.deferred():
                self._save(self.saved, complete=True, stages=stages)
        return replace(result, stages=stages.metrics, seconds=self._seconds())

    def _stage_signal(self, signals: StopOnSignal) -> None:
        """A signal during the second stage ends the run; its checkpoint keeps the main model, in one stage."""
        number = signals.requested()
        if number:
            signame = {2: "SIGINT", 15: "SIGTERM"}.get(number, f"signal {number}")
            raise Interrupted(
                f"interrupted by {signame} while training the ranking stage; checkpoint {self.name} holds the "
                "main model, which recommends on its own",
                128 + number,
            )

    def _meta(self, state: EpochState, complete: bool) -> dict[str, Any]:
        """The checkpoint's metadata: the run record, the model's shape, metrics, history, provenance."""
        dataset = self.dataset
        return {
            "run": RunConfig(self.settings, dataset.source).to_dict(),
            "model": self.model_config.to_dict(),
            "features": {
                "dense": dataset.catalog.dense_names,
                "sparse": [f for f, _ in dataset.catalog.sparse_features],
            },
            "global_mean": dataset.global_mean,
            "counts": {"train": len(dataset.train), "validation": len(dataset.validation), "test": len(dataset.test)},
            "metrics": {
                "validation": state.best.metrics,
                "validation_baseline": self.baseline,
                "validation_noise_floor": self.noise_floor,
            },
            "history": state.history,
            "best_epoch": state.best.epoch,
            "epochs_done": state.epoch,
            "seconds": self._seconds(),
            "versions": versions(),
            "complete": complete,
            "processes": self.parallel.world,
        }

    def _seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def _result(self) -> TrainResult | None:
        names = [self.name]
        if self.parallel.active:  # rank 0 chose the name of a new checkpoint
            torch.distributed.broadcast_object_list(names, src=0)
        if not self.parallel.is_main or names[0] is None:
            return None
        best = self.best
        done = int(self.history[-1]["epoch"]) if self.history else 0
        early = self.settings.patience if done < self.settings.epochs else None
        store = store_option(self.store.root)
        advice = run_advice(self.history, best.epoch, early is not None, self.settings, names[0], store)
        return TrainResult(
            names[0],
            self.history,
            best.metrics,
            self.baseline,
            self.noise_floor,
            self._seconds(),
            best.epoch,
            early,
            advice=advice,
        )

    # Cleaning up -----------------------------------------------------------------------------------
    def cleanup(self, failed: bool = False) -> None:
        """Give up the checkpoint's name and leave the process group (after a clean run, once every rank
        is done)."""
        if self.claimed is not None:
            self.store.release(self.claimed)
        distributed.leave(clean=not failed)

    def blame(self, error: DlrmError) -> DlrmError:
        """A failure belongs to a rank: name it (a signal stops every rank alike, so it names none)."""
        if self.parallel.active and not isinstance(error, Interrupted):
            error.args = (f"rank {self.parallel.rank}: {error}",)
        return error


@dataclass
class ResumeFrom:
    """A checkpoint's training state: where a resumed run continues."""

    name: str
    meta: dict[str, Any]
    best_state: dict[str, torch.Tensor]
    last: dict[str, Any]


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


def training_data(dataset: Dataset, settings: TrainConfig) -> Dataset:
    """The data set as a run with ``settings`` trains on it: with the implicit-feedback bags if it asks for them
    (cut to ``bag_cap`` members, drawn with the run's seed)."""
    return with_bags(dataset, settings.bag_cap, settings.seed) if settings.bags else dataset


def model_config_for(dataset: Dataset, settings: TrainConfig) -> ModelConfig:
    """The model's inputs follow from the data: its dense columns and its sparse features."""
    catalog = dataset.catalog
    dim = settings.embedding_dim
    heads = settings.heads_for(catalog.implicit)
    # A model without a rating head outputs the probability of an interaction: its scale is 0 to 1.
    low, high = (catalog.rating_min, catalog.rating_max) if heads[0] == "rating" else (0.0, 1.0)
    return ModelConfig(
        num_dense=len(catalog.dense_names),
        tables=tuple(
            TableConfig(name, rows, bag=name in catalog.normalised_bags) for name, rows in catalog.sparse_features
        ),
        embedding_dim=dim,
        bottom_mlp=(*settings.bottom_mlp, dim),
        top_mlp=tuple(settings.top_mlp),
        rating_min=low,
        rating_max=high,
        dropout=settings.dropout,
        biases=settings.biases,
        heads=heads,
        ensemble=settings.ensemble,
    )


@dataclass(frozen=True)
class Objective:
    """The loss, outside the model: mean squared error of the rating head on the rated pairs, plus
    ``ranking_weight`` times the ranking head's binary cross-entropy on the rated pairs (label 1) and their
    sampled negatives (label 0), plus ``embedding_l2`` times the mean squared norm of the embeddings the
    batch looked up. A batch holds its rated pairs first, then the negatives. With ``positives="liked"``,
    a rated pair below ``relevant`` is left out of the cross-entropy: the ranking head learns which items a
    user picks and likes, what ``evaluate --k`` counts as relevant (on the MovieLens subset: validation
    NDCG@10 0.171 against 0.161; making those pairs negatives instead gave 0.162)."""

    heads: tuple[str, ...] = ("rating",)
    rating_min: float = 0.0
    rating_span: float = 5.0
    ranking_weight: float = 1.0
    positives: str = "all"  # TrainConfig.positives
    relevant: float = RELEVANT_RATING  # the rating that makes a rated pair a liked one

    @classmethod
    def of(cls, config: ModelConfig, settings: TrainConfig, relevant: float = RELEVANT_RATING) -> Objective:
        span = config.rating_max - config.rating_min
        return cls(config.heads, config.rating_min, span, settings.ranking_weight, settings.positives, relevant)

    def loss(self, logits: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """The objective of a batch's logits (B x H); ``ratings`` are the rated pairs' (the first rows). An
        ensemble's logits (B x H x K): the sum of its models' objectives, each model fitted on its own."""
        if logits.dim() == 3:
            return torch.stack([self.loss(logits[:, :, member], ratings) for member in range(logits.shape[2])]).sum()
        rated = ratings.shape[0]
        loss = logits.new_zeros(())
        if "rating" in self.heads:
            predicted = to_rating(logits[:rated, self.heads.index("rating")], self.rating_min, self.rating_span)
            loss = nn.functional.mse_loss(predicted, ratings)
        if "ranking" in self.heads:
            ranking = logits[:, self.heads.index("ranking")]
            labels = torch.zeros_like(ranking)
            labels[:rated] = 1.0
            weights = None
            if self.positives == "liked":  # a rated pair the user did not like counts neither way
                weights = torch.ones_like(ranking)
                weights[:rated] = (ratings >= self.relevant).to(weights.dtype)
            bce = nn.functional.binary_cross_entropy_with_logits(ranking, labels, weight=weights, reduction="sum")
            loss = loss + self.ranking_weight * bce / (weights.sum() if weights is not None else ranking.shape[0])
        return loss


def train_step(
    model: nn.Module,
    optimizers: Optimizers,
    dense: torch.Tensor,
    kjt: KeyedJaggedTensor,
    target: torch.Tensor,
    embedding_l2: float = 0.0,
    objective: Objective | None = None,
    borrow: tuple[torch.Tensor, int] | None = None,
    cached: dict[int, tuple[torch.Tensor | None, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """One optimizer step on a batch; returns the objective (for the rating objective, the MSE) without
    its L2 term. See ``Objective``; the default is the rating objective on a 0-5 scale. ``model`` is a
    ``TrainingDLRM`` (or DistributedModelParallel around one); ``borrow`` and ``cached``: see
    ``RatingDLRM.training_outputs``."""
    logits, embedded = model(dense, kjt, borrow, cached) if cached else model(dense, kjt, borrow)
    if objective is None:
        bare = distributed.bare(model)
        objective = Objective(rating_min=bare.rating_min, rating_span=bare.rating_span)
    fitted = objective.loss(logits, target)
    loss = fitted + embedding_l2 * embedded.pow(2).sum(dim=(1, 2)).mean() if embedding_l2 else fitted
    optimizers.zero_grad()
    loss.backward()
    optimizers.step()
    members = logits.shape[2] if logits.dim() == 3 else 1
    return fitted.detach() / members  # an ensemble's: its models' mean


class NegativeSampler:
    """Items a user did not rate, to train the ranking head against: ``negatives`` per rated pair, drawn
    with replacement among the items with training ratings, uniformly or in proportion to their counts
    (``popularity``). Uniform draws teach the head how likely a user is to pick an item, popularity
    included; popularity-weighted ones teach it how much more likely than its popularity says, which
    recommends rarer items (on the MovieLens subset: NDCG@10 0.069 against 0.233, coverage 0.79 against
    0.29). A draw that the user did rate stays in as a negative: at these densities it is rare, and
    checking costs more."""

    def __init__(self, weights: torch.Tensor, negatives: int) -> None:
        self.weights = weights
        self.negatives = negatives

    @classmethod
    def for_run(cls, dataset: Dataset, settings: TrainConfig) -> NegativeSampler | None:
        if "ranking" not in settings.heads_for(dataset.catalog.implicit):
            return None
        counts = torch.bincount(dataset.train.item, minlength=len(dataset.catalog.items) + 1).double()
        weights = counts if settings.negative_sampling == "popularity" else (counts > 0).double()
        return cls(weights, settings.negatives)

    def extend(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's pairs followed by ``negatives`` sampled items for each of its users."""
        negative_users = users.repeat(self.negatives)
        negative_items = torch.multinomial(self.weights, negative_users.shape[0], replacement=True)
        return torch.cat((users, negative_users)), torch.cat((items, negative_items))


VALIDATION_RANKING_USERS = 1000  # users whose full rankings score each epoch of a run with a ranking head


def validation_ranking_task(dataset: Dataset) -> Any:
    """The validation users' ranking task (see ``dlrm_cli.scoring.ranking``), at most ``VALIDATION_RANKING_USERS``
    of them, chosen at random once: known pairs are the training rows, relevant ones the validation rows."""
    from dlrm_cli.scoring.ranking import held_out_task

    task = held_out_task(dataset, "validation", relevant_rating(dataset.catalog.rating_max))
    if len(task.users) > VALIDATION_RANKING_USERS:
        chosen = torch.randperm(len(task.users), generator=torch.Generator().manual_seed(0))
        task = replace(task, users=task.users[chosen[:VALIDATION_RANKING_USERS]].sort().values)
    return task


def validation_ndcg(model: nn.Module, catalog: Catalog, task: Any, device: torch.device) -> float:
    """NDCG@10 of the model's ranking head over the task's users (0 when it has none), each user's candidates
    scored in the context of the user's first relevant validation rating (``RankingTask.user_context``)."""
    from dlrm_cli.scoring.ranking import rank_metrics

    if len(task.users) == 0:
        return 0.0
    scorer = candidate_scorer(model, catalog, task, device)
    return float(rank_metrics(task, scorer, (10,))["@10"]["ndcg"])  # type: ignore[index]


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[package] = md.version(package)
    return found


def _validate_shared(model: nn.Module, dataset: Dataset, device: torch.device, parallel: Parallel) -> dict[str, float]:
    """Validation metrics over several ranks: each scores its share of each chunk, and the sums are reduced."""
    ratings, catalog = dataset.validation, dataset.catalog
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # squared error, absolute error, count
    with torch.no_grad():  # fused kernels run only behind autograd on CPU
        for start in range(0, len(ratings), EVAL_BATCH):
            rows = torch.arange(start, min(start + EVAL_BATCH, len(ratings)))
            mine = parallel.share(rows)
            weight = torch.ones(len(mine), dtype=torch.float64)
            if len(mine) == 0:  # fewer rows than ranks: score a stand-in row with no weight
                mine, weight = rows[:1], torch.zeros(1, dtype=torch.float64)
            dense, kjt = catalog.batch(ratings.user[mine], ratings.item[mine], context=ratings.context_of(mine))
            predicted = distributed.bare(model).predict(dense.to(device), kjt.to(device))
            diff = predicted.double().cpu() - ratings.rating[mine].double()
            sums += torch.stack([(weight * diff**2).sum(), (weight * diff.abs()).sum(), weight.sum()])
    model.train()
    total = parallel.sum(sums)
    mse = float(total[0] / total[2])
    return {"mse": mse, "rmse": mse**0.5, "mae": float(total[1] / total[2])}


def _check_fits(config: ModelConfig) -> None:
    """Refuse, before allocating, a model that with its optimizer state and snapshots outgrows the memory."""
    try:
        sizes = "--embedding-dim, --bottom-mlp or --top-mlp"
        if config.ensemble > 1:  # which multiplies every size
            sizes = "--embedding-dim, --bottom-mlp, --top-mlp or --ensemble"
        config.refuse_oversized(copies=3, hint=f"choose a smaller {sizes}")
    except ValueError as error:
        raise DlrmUsageError(str(error)) from None


def _cpu_copy(obj: Any) -> Any:
    """A deep copy on the CPU of a (nested) state dict, safe from later in-place updates."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: _cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(value) for value in obj)
    return obj
