"""Training on several processes and machines: torch.distributed with TorchRec's DistributedModelParallel.

Every process (rank) builds the same model; TorchRec's planner shards the embedding tables across the
ranks (table-wise, column-wise or data-parallel on CPU), the MLPs are replicated with DDP, and each rank
trains on its own share of every global batch. Collectives keep the ranks in step: validation metrics are
summed over ranks, the stop flag of a signal is shared, and checkpoints are gathered to rank 0, which
alone writes them, as ordinary single-process checkpoints.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dlrm_cli.config import ModelConfig, TrainConfig
from dlrm_cli.model.dlrm import RatingDLRM, TrainingDLRM, bias_configs, bias_name, embedding_configs, table_name
from dlrm_cli.model.optim import Optimizers, dense_optimizer, scheduled, sharded_optimizer
from dlrm_cli.runtime.quiet import quiet_library_logs

TIMEOUT = timedelta(seconds=int(os.environ.get("DLRM_DIST_TIMEOUT", "120")))
# Data-parallel tables run FBGEMM's dense lookup, whose CPU build has no autograd kernel (torch warns that
# its gradients may be silently wrong), so on CPU the planner chooses between table-wise and column-wise.
CPU_SHARDING = ("table_wise", "column_wise")
GPU_SHARDING = ("table_wise", "column_wise", "row_wise", "table_row_wise", "data_parallel")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Parallel:
    """Where this process stands among the ranks. ``Parallel()`` is a single process."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def share(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch."""
        return rows[self.rank :: self.world] if self.active else rows

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.active:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def gathered(self, value: float) -> list[float]:
        """``value`` from every rank, in rank order (this process's alone when single)."""
        if not self.active:
            return [value]
        values = [torch.zeros(1, dtype=torch.float64) for _ in range(self.world)]
        dist.all_gather(values, torch.tensor([value], dtype=torch.float64))
        return [float(each) for each in values]

    def any(self, flag: int) -> int:
        """The largest flag over the ranks (0: none), so that all ranks stop together."""
        if not self.active:
            return flag
        value = torch.tensor([flag], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value)


@dataclass(frozen=True)
class Shard:
    """How the planner placed one embedding table: its sharding type and the ranks that hold it."""

    table: str
    sharding: str
    ranks: tuple[int, ...]


def join() -> Parallel:
    """Join the process group that torchrun set up (gloo on CPU, nccl on CUDA)."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Parallel(rank=dist.get_rank(), world=dist.get_world_size())


class _Failure:
    at: int | None = None  # when this rank gave up (``time.time_ns()``)


def failed_at() -> int | None:
    """When this rank failed: before it left the group, so before any peer could fail for lack of it."""
    return _Failure.at


def leave(clean: bool = True) -> None:
    """Leave the process group. After a clean run, wait for every rank first: tearing down gloo's
    connections while a peer still sends is what aborts a process ("terminate called ...")."""
    if not clean and _Failure.at is None:
        _Failure.at = time.time_ns()
    if dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def build_sharded(
    config: ModelConfig, settings: TrainConfig, device: torch.device, parallel: Parallel
) -> tuple[nn.Module, Optimizers, Any]:
    """The model wrapped in DistributedModelParallel with FBGEMM's fused optimizer on every shard."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    optim_type = sharded_optimizer(settings.sparse_optimizer)
    meta = torch.device("meta")
    ebc = EmbeddingBagCollection(tables=embedding_configs(config), device=meta)
    biases = EmbeddingBagCollection(tables=bias_configs(config), device=meta) if config.biases else None
    model = TrainingDLRM(config, embedding_bag_collection=ebc, device=device, biases=biases)
    sharder = EmbeddingBagCollectionSharder(fused_params={"optimizer": optim_type, "learning_rate": settings.sparse_lr})
    types = CPU_SHARDING if device.type == "cpu" else GPU_SHARDING
    names = [table_name(t.feature) for t in config.tables] + [bias_name(t.feature) for t in config.bias_tables]
    constraints = {name: ParameterConstraints(sharding_types=list(types)) for name in names}
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=parallel.world, compute_device=device.type), constraints=constraints
    )
    plan = planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=model, device=device, plan=plan, sharders=[sharder])
    dense_params = [param for _, param in in_backward_optimizer_filter(dmp.named_parameters())]
    return dmp, scheduled(dense_optimizer(dense_params, settings), dmp.fused_optimizer, settings), plan


def bare(model: nn.Module) -> RatingDLRM:
    """The RatingDLRM inside DistributedModelParallel (and DDP), or the model itself."""
    while not isinstance(model, RatingDLRM):
        model = model.module
    return model


def plan_table(plan: Any) -> list[Shard]:
    """One row per table: how the planner sharded it and on which ranks."""
    rows = [
        Shard(table, sharding.sharding_type, tuple(sharding.ranks or ()))
        for module_plan in plan.plan.values()
        for table, sharding in module_plan.items()
    ]
    return sorted(rows, key=lambda row: row.table)


def full_state(model: nn.Module, parallel: Parallel) -> dict[str, torch.Tensor] | None:
    """Every weight as a whole CPU tensor on rank 0 (None elsewhere). A collective: all ranks call it."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    gathered = {}
    with quiet_library_logs():  # torch deprecates ShardedTensor, which TorchRec's sharded tables still are
        for key, value in model.state_dict().items():
            if isinstance(value, ShardedTensor):
                out = torch.empty(value.size(), dtype=value.dtype) if parallel.is_main else None
                value.gather(dst=0, out=out)
                value = out
            if parallel.is_main:
                gathered[_plain_key(key)] = value.detach().to("cpu", copy=True)
    return gathered if parallel.is_main else None


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors into this rank's shards (and its replicated weights): resume with any world size."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    with torch.no_grad():
        for key, value in model.state_dict().items():
            source = state[_plain_key(key)]
            if isinstance(value, ShardedTensor):
                for shard in value.local_shards():
                    offsets, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    piece = source[offsets[0] : offsets[0] + sizes[0], offsets[1] : offsets[1] + sizes[1]]
                    shard.tensor.copy_(piece)
            else:
                value.copy_(source)


def _plain_key(key: str) -> str:
    return key.removeprefix("module.")
