"""Heavy implicit-feedback bags read from a cache of their pooled sums (``dlrm train --heavy-bags N``).

A bag's pooled value is the sum of its members' rows over the square root of its size. Trained exactly, a sample
looks up every member of its user's and its item's bag: on data of MovieLens-25M's shape, 22,799 rows a sample,
most of them in the bags of the few thousand most-rated films. With this cache, a bag of more than N members is
read from the sums as they were at the last refresh, one row a sample (less the rating's own member, which the
exact path leaves out too), and its gradient, kept per bag, reaches every member once every ``bag_refresh``
batches: summed over them and applied by the tables' own fused optimizer, after which the sums are recomputed.
Bags of at most N members are pooled exactly, as without the option. Scoring is unchanged: ``pool_bags`` pools
every bag whole, from the trained rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_cli.data.catalog import Bag, Catalog
from dlrm_cli.model.dlrm import RatingDLRM, table_name


@dataclass
class CachedBag:
    """One bag feature's cache: its heavy owners' sums, and the gradient waiting for the next refresh."""

    feature: str
    owner: str  # "users" or "items": whose bag it is
    position: int  # among the model's features
    bag: Bag
    heavy: torch.Tensor  # per owner row: is its bag read from the cache
    keys: torch.Tensor  # each distinct owner * (table rows + 1) + member, ascending: finds a member in a bag
    key_counts: torch.Tensor  # how many times each of them is in its bag
    heavy_values: torch.Tensor  # the heavy bags' members, bag after bag
    heavy_offsets: torch.Tensor  # where each owner's heavy bag starts among them (light bags: empty)
    member_owners: torch.Tensor  # the heavy bags' owners, grouped by member (the bags transposed)
    member_offsets: torch.Tensor
    sums: torch.Tensor | None = None  # owner rows x D: each heavy bag's sum at the last refresh
    table: torch.Tensor | None = None  # the member table at the last refresh
    pending: torch.Tensor | None = None  # owner rows x D: the gradient of each heavy bag's sum since then
    direct: torch.Tensor | None = None  # member rows x D: the gradient of the left-out members since then

    @classmethod
    def of(cls, feature: str, owner: str, position: int, bag: Bag, limit: int) -> CachedBag:
        sizes = bag.offsets.diff()
        owners = torch.repeat_interleave(torch.arange(sizes.shape[0]), sizes)
        heavy = sizes > limit
        in_heavy = heavy[owners]
        members, their_owners = bag.values[in_heavy], owners[in_heavy]
        order = torch.sort(members, stable=True).indices
        counts = torch.bincount(members, minlength=bag.table_rows)
        heavy_sizes = torch.where(heavy, sizes, 0)
        keys, key_counts = torch.unique_consecutive(owners * (bag.table_rows + 1) + bag.values, return_counts=True)
        return cls(
            feature, owner, position, bag, heavy, keys, key_counts.to(torch.int32),
            heavy_values=members,
            heavy_offsets=torch.cumsum(heavy_sizes, 0) - heavy_sizes,
            member_owners=their_owners[order],
            member_offsets=torch.cat((torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0))),
        )  # fmt: skip

    def recompute(self, weight: torch.Tensor) -> None:
        """The heavy bags' sums from the member table's current rows (light bags sum to nothing here)."""
        self.table = weight.detach().cpu().clone()
        self.sums = nn.functional.embedding_bag(self.heavy_values, self.table, self.heavy_offsets, mode="sum")
        if self.pending is None:
            self.pending, self.direct = torch.zeros_like(self.sums), torch.zeros_like(self.table)

    def pooled(self, rows: torch.Tensor, left_out: torch.Tensor) -> torch.Tensor:
        """The heavy bags of ``rows`` (owner rows), each less its ``left_out`` member, over the square root of
        what is left: the exact path's value as of the last refresh. Its gradient is kept for ``member_grad``."""
        key = rows * (self.bag.table_rows + 1) + left_out
        found = torch.searchsorted(self.keys, key).clamp(max=self.keys.shape[0] - 1)
        copies = torch.where(self.keys[found] == key, self.key_counts[found], 0)
        rest = self.bag.sizes(rows) - copies
        norm = (rest.clamp(min=1).to(self.sums.dtype).rsqrt() * (rest > 0)).unsqueeze(1)
        value = ((self.sums[rows] - copies.unsqueeze(1) * self.table[left_out]) * norm).requires_grad_()
        pending, direct = self.pending, self.direct

        def keep(grad: torch.Tensor) -> None:
            grad = grad.cpu()
            pending.index_add_(0, rows, grad * norm)
            direct.index_add_(0, left_out, -grad * (copies.unsqueeze(1) * norm))

        value.register_hook(keep)
        return value

    def member_grad(self) -> torch.Tensor:
        """Each member's gradient since the last refresh: the sum over the heavy bags holding it, less what it
        left out; the pending sums are then cleared."""
        grad = nn.functional.embedding_bag(self.member_owners, self.pending, self.member_offsets[:-1], mode="sum")
        grad = grad + self.direct
        self.pending.zero_()
        self.direct.zero_()
        return grad


class BagCache:
    """The heavy bags of every bag feature of a single-process, fused-table training run."""

    def __init__(self, model: RatingDLRM, catalog: Catalog, limit: int, refresh: int) -> None:
        self.model, self.catalog, self.refresh = model, catalog, refresh
        features = model.config.feature_names
        self.bags = [
            CachedBag.of(name, kind, features.index(name), bag, limit)
            for kind, table in (("users", catalog.users), ("items", catalog.items))
            for name, bag in table.bags.items()
        ]
        self.steps = 0
        self.device = next(model.parameters()).device

    @property
    def ebc(self) -> nn.Module:
        return self.model.dlrm.sparse_arch.embedding_bag_collection

    def weight(self, feature: str) -> torch.Tensor:
        return self.ebc.state_dict()[f"embedding_bags.{table_name(feature)}.weight"]

    def start(self) -> None:
        """Read the sums from the tables as they are now (an epoch's start, a resumed run's)."""
        for cached in self.bags:
            cached.recompute(self.weight(cached.feature))

    def batch(
        self, users: torch.Tensor, items: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[int, tuple[torch.Tensor, torch.Tensor]]]:
        """For a batch of (user row, item row) pairs: the owner rows whose bags the batch leaves to the cache
        (``Catalog.batch``'s ``cached``), and each bag feature's position, which samples read the cache and
        their values (``RatingDLRM.training_outputs``'s ``cached``)."""
        rows = {"users": users, "items": items}
        left_out = {"users": self.catalog.items.id_rows[items], "items": self.catalog.users.id_rows[users]}
        skip, values = {}, {}
        for cached in self.bags:
            owned = rows[cached.owner]
            mask = cached.heavy[owned]
            skip[cached.feature] = cached.heavy
            value = cached.pooled(owned[mask], left_out[cached.owner][mask])
            values[cached.position] = (mask.to(self.device), value.to(self.device))
        return skip, values

    def step_done(self) -> None:
        self.steps += 1
        if self.steps % self.refresh == 0:
            self.flush()

    def flush(self) -> None:
        """Apply every member's gradient since the last refresh with the tables' fused optimizer (a backward
        pass over one lookup of each touched member, given that gradient), then recompute the sums."""
        features = self.model.config.feature_names
        for cached in self.bags:
            grad = cached.member_grad()
            touched = torch.nonzero(grad.abs().sum(dim=1) > 0).flatten()
            if touched.numel() == 0:
                continue
            lengths = torch.zeros(len(features), touched.shape[0], dtype=torch.int64)
            lengths[cached.position] = 1
            kjt = KeyedJaggedTensor.from_lengths_sync(keys=features, values=touched, lengths=lengths.flatten())
            pooled = self.ebc(kjt.to(self.device))[cached.feature]
            torch.autograd.backward(pooled, grad[touched].to(self.device))
        self.start()
