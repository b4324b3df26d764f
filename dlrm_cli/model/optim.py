"""The model as trained, with its optimizers.

``fused`` (the default): TorchRec's FusedEmbeddingBagCollection (fed in table order: ``model.fused``), whose
FBGEMM kernels apply the sparse optimizer to the rows a batch touched inside the backward pass; the MLPs keep
Adam. ``plain``: an EmbeddingBagCollection and Adam over every parameter, as in the seed script, which updates
every row of every table at every step. Both keep their weights under the same state-dict keys, so checkpoints
from either path load into the other (and into the plain model used by evaluate, predict and export).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.keyed import CombinedOptimizer

from dlrm_cli.config import ModelConfig, TrainConfig
from dlrm_cli.model.dlrm import TrainingDLRM, bias_configs, embedding_configs
from dlrm_cli.model.fused import OrderedFusedEmbeddingBagCollection

# Each ``--sparse-optimizer`` (``dlrm_cli.config.SPARSE_OPTIMIZERS``) as the optimizer class that TorchRec's
# fused tables take in one process, and as the FBGEMM kernel that sharded tables take under torchrun.
SPARSE_OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "rowwise_adagrad": RowWiseAdagrad,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}
SHARDED_OPTIMIZERS = {"rowwise_adagrad": "EXACT_ROWWISE_ADAGRAD", "adagrad": "EXACT_ADAGRAD", "sgd": "EXACT_SGD"}


@dataclass
class Optimizers:
    """The dense optimizer, the fused sparse one (if any), and a learning-rate schedule for each: on a
    validation plateau (``ReduceLROnPlateau``, stepped with the epoch's validation figure) or every
    ``lr_step`` epochs (``StepLR``)."""

    dense: torch.optim.Optimizer
    sparse: Any | None
    schedulers: list[Any]  # StepLR or ReduceLROnPlateau

    def __post_init__(self) -> None:
        self._schedule_fused_tables()  # the first rate (and the schedule sees its optimizer step before it)

    def zero_grad(self) -> None:
        self.dense.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Step the dense optimizer. The fused tables updated their rows in the backward pass; their ``step``
        only hands the kernels the learning rate, which changes at an epoch's end and at a restore, where
        ``_schedule_fused_tables`` hands it over (once a step, it cost a training step of 256 about 1%)."""
        self.dense.step()

    def epoch_done(self, worse: float | None = None) -> None:
        """End an epoch. ``worse``: its validation figure, lower is better (RMSE, or minus NDCG@10), which a
        plateau schedule needs and a step schedule ignores."""
        for scheduler in self.schedulers:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if worse is None:
                    raise ValueError("a plateau learning-rate schedule needs the epoch's validation figure")
                scheduler.step(worse)
            else:
                scheduler.step()
        self._schedule_fused_tables()

    def _schedule_fused_tables(self) -> None:
        """Hand the fused tables' kernels the scheduled learning rate now. They take it in the forward pass
        (their ``step`` only sets it), so without this the first batch of an epoch would use the previous
        epoch's rate, and the first batch of a resumed run the initial one."""
        if self.sparse is not None:
            self.sparse.step()

    @property
    def lr(self) -> float:
        return float(self.dense.param_groups[0]["lr"])

    def state_dict(self, sparse: bool = True) -> dict[str, Any]:
        """``sparse=False`` leaves out the fused tables' optimizer state (sharded, when distributed)."""
        return {
            "dense": self.dense.state_dict(),
            "sparse": self.sparse.state_dict() if self.sparse is not None and sparse else None,
            "schedulers": [s.state_dict() for s in self.schedulers],
        }

    def load_state_dict(self, state: dict[str, Any], sparse: bool = True) -> None:
        """Restore; the fused tables' state only where it was saved in this layout (else it starts afresh)."""
        self.dense.load_state_dict(state["dense"])
        if sparse and self.sparse is not None and state["sparse"] is not None:
            self.sparse.load_state_dict(state["sparse"])
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)
            # The fused tables' optimizer state leaves out its learning rate: take the schedule's (saved with
            # as many groups as the run had shards, which a resume with other process counts changes).
            rates = scheduler.get_last_lr()
            for index, group in enumerate(scheduler.optimizer.param_groups):
                group["lr"] = rates[min(index, len(rates) - 1)]
        self._schedule_fused_tables()


def build_for_training(
    config: ModelConfig, settings: TrainConfig, device: torch.device
) -> tuple[TrainingDLRM, Optimizers]:
    if settings.embeddings == "plain":
        model = TrainingDLRM(config, device=device)
        dense = dense_optimizer(model.parameters(), settings, fused=None)  # torch picks the kernel
        sparse = None
    else:
        kwargs: dict[str, Any] = {"lr": settings.sparse_lr}
        ebc = OrderedFusedEmbeddingBagCollection(
            tables=embedding_configs(config),
            optimizer_type=SPARSE_OPTIMIZER_CLASSES[settings.sparse_optimizer],
            optimizer_kwargs=kwargs,
            device=device,
        )
        biases = None
        if config.biases:
            biases = OrderedFusedEmbeddingBagCollection(
                tables=bias_configs(config),
                optimizer_type=SPARSE_OPTIMIZER_CLASSES[settings.sparse_optimizer],
                optimizer_kwargs=kwargs,
                device=device,
            )
        model = TrainingDLRM(config, embedding_bag_collection=ebc, device=device, biases=biases)
        fused = [ebc] if biases is None else [ebc, biases]
        table_params = {id(p) for tables in fused for p in tables.parameters()}
        mlp_params = [p for p in model.parameters() if id(p) not in table_params]
        dense = dense_optimizer(mlp_params, settings)
        sparse = (
            ebc.fused_optimizer()
            if biases is None
            else CombinedOptimizer([ebc.fused_optimizer(), ("biases", biases.fused_optimizer())])
        )
    return model, scheduled(dense, sparse, settings)


def dense_optimizer(params: Any, settings: TrainConfig, fused: bool | None = True) -> torch.optim.Adam:
    """Adam over the weights that autograd updates (the MLPs; with plain tables, the tables too)."""
    return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay, fused=fused)


def scheduled(dense: torch.optim.Optimizer, sparse: Any | None, settings: TrainConfig) -> Optimizers:
    """The optimizers with the run's learning-rate schedule on each (``--lr-schedule``): ``plateau`` keeps the
    rate while validation improves and multiplies it by ``lr_gamma`` after an epoch that did not improve it;
    ``step`` multiplies it by ``lr_gamma`` every ``lr_step`` epochs."""
    schedulers: list[Any] = []
    for optimizer in (dense, sparse):
        if optimizer is None:
            continue
        if settings.lr_schedule == "plateau" and settings.lr_gamma < 1.0:  # a factor of 1: a constant rate
            schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=settings.lr_gamma, patience=0, threshold=0.0
            )
        else:
            schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=settings.lr_gamma)
        schedulers.append(schedule)
    return Optimizers(dense, sparse, schedulers)


def sharded_optimizer(name: str) -> Any:
    """FBGEMM's kernel for a ``--sparse-optimizer`` on sharded tables."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    return EmbOptimType[SHARDED_OPTIMIZERS[name]]
