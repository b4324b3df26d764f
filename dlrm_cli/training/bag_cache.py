"""Heavy implicit-feedback bags read from a cache of their pooled sums (``dlrm train --heavy-bags N``).

A bag's pooled value is the sum of its members' rows over the square root of its size. Trained exactly, a sample
looks up every member of its user's and its item's bag: on data of MovieLens-25M's shape, 22,799 rows a sample,
most of them in the bags of the few thousand most-rated films. With this cache, a bag of more than N members is
read from the sums as they were at the last refresh, one row a sample (less the rating's own member, which the
exact path leaves out too), and its gradient, kept per bag, reaches every member once every ``bag_refresh``
batches: summed over them and applied by the tables' own fused optimizer, after which the sums are recomputed.
Bags of at most N members are pooled exactly, as without the option. Scoring is unchanged: ``pool_bags`` pools
every bag whole, from the trained rows.

The bag features (a user's rated items, an item's raters) are joined into one bag, their owner rows and member
rows laid end to end, so that a batch reads, and its gradient is kept, in one pass for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_cli.data.catalog import Bag, Catalog
from dlrm_cli.model.dlrm import RatingDLRM, table_name
from dlrm_cli.runtime.threads import one_thread

FOLDED_READS = 32  # reads kept before their gradients are added into the bags (see CachedBag.reads)


@dataclass(frozen=True)
class Part:
    """One bag feature's place in the joined bag."""

    feature: str
    owner: str  # "users" or "items": whose bag it is
    position: int  # among the model's features
    owner_start: int  # its first owner row in the joined bag
    owners: int
    member_start: int  # its first member row in the joined table
    members: int


def joined(bags: list[Bag], parts: list[Part]) -> Bag:
    """The bags laid end to end, in the parts' order: owners after owners, each bag's members shifted to its
    part's first member row."""
    value_starts = torch.tensor([0, *(int(bag.offsets[-1]) for bag in bags)]).cumsum(0)[:-1].tolist()
    values = [bag.values + part.member_start for bag, part in zip(bags, parts, strict=True)]
    offsets = [torch.zeros(1, dtype=torch.int64)]
    offsets += [bag.offsets[1:] + start for bag, start in zip(bags, value_starts, strict=True)]
    return Bag(torch.cat(values), torch.cat(offsets), parts[-1].member_start + parts[-1].members)


@dataclass
class CachedBag:
    """A bag's cache: its heavy owners' sums, and the gradient waiting for the next refresh."""

    bag: Bag
    heavy: torch.Tensor  # per owner row: is its bag read from the cache
    keys: torch.Tensor  # each distinct owner * (table rows + 1) + member, ascending: finds a member in a bag
    key_counts: torch.Tensor  # how many times each of them is in its bag
    sizes: torch.Tensor  # per owner row: its bag's size
    heavy_values: torch.Tensor  # the heavy bags' members, bag after bag
    heavy_offsets: torch.Tensor  # where each owner's heavy bag starts among them (light bags: empty)
    member_owners: torch.Tensor  # the heavy bags' owners, grouped by member (the bags transposed)
    member_offsets: torch.Tensor
    sums: torch.Tensor | None = None  # owner rows x D: each heavy bag's sum at the last refresh
    table: torch.Tensor | None = None  # the member table at the last refresh
    pending: torch.Tensor | None = None  # owner rows x D: the gradient of each heavy bag's sum since then
    direct: torch.Tensor | None = None  # member rows x D: the gradient of the left-out members since then
    # Each read's (owner rows, left-out rows, weights, gradient) not yet in ``pending`` and ``direct``: added at
    # once (``fold``) at a refresh or every ``FOLDED_READS`` reads, two sums then instead of two at every batch.
    reads: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def of(cls, bag: Bag, limit: int) -> CachedBag:
        sizes = bag.offsets.diff()
        owners = torch.repeat_interleave(torch.arange(sizes.shape[0]), sizes)
        heavy = sizes > limit
        in_heavy = heavy[owners]
        members, their_owners = bag.values[in_heavy], owners[in_heavy]
        order = torch.sort(members, stable=True).indices
        counts = torch.bincount(members, minlength=bag.table_rows)
        heavy_sizes = torch.where(heavy, sizes, 0)
        keys, key_counts = torch.unique_consecutive(owners * (bag.table_rows + 1) + bag.values, return_counts=True)
        if len(keys) == 0 or int(keys[-1]) < 2**31:  # half the bytes to search through, where the keys fit
            keys = keys.to(torch.int32)
        return cls(
            bag, heavy, keys, key_counts.to(torch.int32), sizes.to(torch.int32),
            heavy_values=members,
            heavy_offsets=torch.cumsum(heavy_sizes, 0) - heavy_sizes,
            member_owners=their_owners[order],
            member_offsets=torch.cat((torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0))),
        )  # fmt: skip

    def recompute(self, table: torch.Tensor) -> None:
        """The heavy bags' sums from the member table's current rows (light bags sum to nothing here)."""
        self.table = table
        self.sums = nn.functional.embedding_bag(self.heavy_values, self.table, self.heavy_offsets, mode="sum")
        if self.pending is None:
            self.pending, self.direct = torch.zeros_like(self.sums), torch.zeros_like(self.table)

    def weights(self, rows: torch.Tensor, left_out: torch.Tensor) -> torch.Tensor:
        """B x 2, for the heavy bags of ``rows`` (owner rows) each less its ``left_out`` member: one over the
        square root of what is left (0 for nothing), and that times the member's copies in the bag."""
        key = (rows * (self.bag.table_rows + 1) + left_out).to(self.keys.dtype)
        found = torch.searchsorted(self.keys, key).clamp_(max=self.keys.shape[0] - 1)
        copies = torch.where(self.keys[found] == key, self.key_counts[found], 0)
        rest = self.sizes[rows] - copies
        norm = rest.clamp(min=1).to(torch.float32).rsqrt_() * (rest > 0)
        return torch.stack((norm, norm * copies), dim=1)

    def pooled(self, rows: torch.Tensor, left_out: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The heavy bags of ``rows`` (owner rows), each less its ``left_out`` member, over the square root of
        what is left: the exact path's value as of the last refresh. Its gradient is kept for ``member_grad``.
        ``weights``: theirs (``weights``), where the caller has them already."""
        weights = (self.weights(rows, left_out) if weights is None else weights).to(self.sums.dtype)
        norm, scaled = weights[:, :1], weights[:, 1:]  # the left-out member's share: its copies times the norm
        value = self.sums.index_select(0, rows) * norm
        value = value.sub_(self.table.index_select(0, left_out) * scaled).requires_grad_()

        def keep(grad: torch.Tensor) -> None:
            self.reads.append((rows, left_out, weights, grad.cpu()))
            if len(self.reads) >= FOLDED_READS:  # a long --bag-refresh holds no more than this many batches' worth
                self.fold()

        value.register_hook(keep)
        return value

    def fold(self) -> None:
        """Add the kept reads' gradients into ``pending`` and ``direct``, in the order they came."""
        if not self.reads:
            return
        rows, left_out, weights, grads = (torch.cat(parts) for parts in zip(*self.reads, strict=True))
        self.reads.clear()
        with one_thread():  # ATen's index_add_ is slower on two threads than on one at these sizes
            self.pending.index_add_(0, rows, grads * weights[:, :1])
            self.direct.index_add_(0, left_out, grads * weights[:, 1:].neg())  # (alpha=-1: 4x slower)

    def member_grad(self) -> torch.Tensor:
        """Each member's gradient since the last refresh: the sum over the heavy bags holding it, less what it
        left out; the pending sums are then cleared."""
        self.fold()
        grad = nn.functional.embedding_bag(self.member_owners, self.pending, self.member_offsets[:-1], mode="sum")
        grad = grad + self.direct
        self.pending.zero_()
        self.direct.zero_()
        return grad


class BagCache:
    """The heavy bags of every bag feature of a single-process, fused-table training run."""

    def __init__(
        self,
        model: RatingDLRM,
        catalog: Catalog,
        limit: int,
        refresh: int,
        pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """``pairs`` (user rows, item rows): the training pairs, whose index ``batch`` may be given, so that
        each pair's weights (``CachedBag.weights``) are found once here rather than at every batch."""
        self.model, self.catalog, self.refresh = model, catalog, refresh
        features = model.config.feature_names
        bags = [(name, kind, bag) for kind, table in (("users", catalog.users), ("items", catalog.items))
                for name, bag in table.bags.items()]  # fmt: skip
        bags.sort(key=lambda named: features.index(named[0]))  # the KJT's order, for the refresh's lookup
        self.parts, owner_start, member_start = [], 0, 0
        for name, kind, bag in bags:
            owners = bag.offsets.shape[0] - 1
            part = Part(name, kind, features.index(name), owner_start, owners, member_start, bag.table_rows)
            self.parts.append(part)
            owner_start, member_start = owner_start + owners, member_start + bag.table_rows
        self.cache = CachedBag.of(joined([bag for _, _, bag in bags], self.parts), limit)
        # every bag read from the cache (an empty one reads as nothing there, as it pools to nothing exactly)
        self.all_heavy = bool((self.cache.heavy | (self.cache.sizes == 0)).all())
        heavy = self.cache.heavy
        self.skip: dict[str, torch.Tensor | Literal[True]] = {  # Catalog.batch's: each owner's bag left empty, or all
            part.feature: True if self.all_heavy else heavy[part.owner_start : part.owner_start + part.owners]
            for part in self.parts
        }
        self.steps = 0
        self.read = False  # whether a batch read the cache since the last refresh
        self.device = next(model.parameters()).device
        self.members: tuple[KeyedJaggedTensor, torch.Tensor, list[int]] | None = None  # see _member_lookup
        self.pair_weights = None if pairs is None else self._weights_of(*pairs)  # parts x pairs x 2

    def _weights_of(self, users: torch.Tensor, items: torch.Tensor, chunk: int = 1 << 20) -> torch.Tensor:
        found = torch.empty(len(self.parts), users.shape[0], 2)
        for start in range(0, users.shape[0], chunk):
            owned, others = self._coordinates(users[start : start + chunk], items[start : start + chunk])
            found[:, start : start + chunk] = self.cache.weights(owned, others).view(len(self.parts), -1, 2)
        return found

    @property
    def ebc(self) -> nn.Module:
        return self.model.dlrm.sparse_arch.embedding_bag_collection

    def weight(self, feature: str) -> torch.Tensor:
        return self.ebc.state_dict()[f"embedding_bags.{table_name(feature)}.weight"]

    def start(self) -> None:
        """Read the sums from the tables as they are now (an epoch's start, a resumed run's)."""
        self.cache.recompute(torch.cat([self.weight(part.feature).detach().cpu() for part in self.parts]))

    def _coordinates(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each pair's owner row and left-out member row in the joined bag, part after part."""
        rows = {"users": users, "items": items}
        left_out = {
            "users": self.catalog.items.id_rows.index_select(0, items),
            "items": self.catalog.users.id_rows.index_select(0, users),
        }
        owned = torch.cat([rows[part.owner] + part.owner_start for part in self.parts])
        others = torch.cat([left_out[part.owner] + part.member_start for part in self.parts])
        return owned, others

    def batch(
        self, users: torch.Tensor, items: torch.Tensor, pairs: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor | Literal[True]], dict[int, tuple[torch.Tensor | None, torch.Tensor]]]:
        """For a batch of (user row, item row) pairs: the owner rows whose bags the batch leaves to the cache
        (``Catalog.batch``'s ``cached``), and each bag feature's position, which samples read the cache and
        their values (``RatingDLRM.training_outputs``'s ``cached``). ``pairs``: the batch's index among the
        training pairs the cache was given, if it is made of them."""
        self.read = True
        owned, others = self._coordinates(users, items)
        weights = None
        if pairs is not None and self.pair_weights is not None:
            weights = self.pair_weights.index_select(1, pairs).view(-1, 2)
        if self.all_heavy:  # every bag is read from the cache (--heavy-bags 0): no flags to scatter by
            chunks = self.cache.pooled(owned, others, weights).to(self.device).chunk(len(self.parts))
            return self.skip, {part.position: (None, chunk) for part, chunk in zip(self.parts, chunks, strict=True)}
        mask = self.cache.heavy[owned]
        value = self.cache.pooled(owned[mask], others[mask], None if weights is None else weights[mask])
        value = value.to(self.device)
        flags = mask.view(len(self.parts), -1)
        chunks = value.split(flags.sum(dim=1).tolist())
        return self.skip, {
            part.position: (flagged.to(self.device), chunk)
            for part, flagged, chunk in zip(self.parts, flags, chunks, strict=True)
        }

    def step_done(self) -> None:
        self.steps += 1
        if self.steps % self.refresh == 0:
            self.flush()

    def flush(self) -> None:
        """Apply every member's gradient since the last refresh with the tables' fused optimizer (one backward
        pass over one lookup of every member row of every bag feature, given that gradient), then recompute
        the sums. Nothing to do when no batch read the cache since (an epoch that ended on a refresh)."""
        if not self.read:
            return
        self.read = False
        self._apply(self.cache.member_grad())
        self.start()

    def _apply(self, grad: torch.Tensor) -> None:
        """Look up each member row once and pass its gradient back. A row whose gradient is zero (no bag that
        holds it was read since the last refresh) is left as it was by every sparse optimizer dlrm offers, whose
        fused kernels take a learning rate and nothing else (``model.optim``): a weight decay given to them
        would also shrink every such row at every refresh."""
        if self.members is None:
            self.members = self._member_lookup()
        kjt, given, columns = self.members
        for part, start in zip(self.parts, columns, strict=True):
            rows = grad[part.member_start : part.member_start + part.members]
            given[: part.members, start : start + rows.shape[1]] = rows.to(self.device)
        torch.autograd.backward(self.ebc(kjt).values(), given)

    def _member_lookup(self) -> tuple[KeyedJaggedTensor, torch.Tensor, list[int]]:
        """The refresh's lookup, the same at every refresh: a KJT with one bag per member row of each bag
        feature (the other features empty), the gradient to give its output, whose other columns stay zero,
        and each part's first column in it."""
        features = self.model.config.feature_names
        batch = max(part.members for part in self.parts)
        lengths = torch.zeros(len(features), batch, dtype=torch.int64)
        for part in self.parts:
            lengths[part.position, : part.members] = 1
        values = torch.cat([torch.arange(part.members) for part in self.parts])
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=features, values=values, lengths=lengths.flatten())
        columns, width = {}, 0  # the output's columns: each table's features in turn, as wide as the table
        for table in self.ebc.embedding_bag_configs():
            for name in table.feature_names:
                columns[name], width = width, width + table.embedding_dim
        given = torch.zeros(batch, width, device=self.device)
        return kjt.to(self.device), given, [columns[part.feature] for part in self.parts]


def training_batch(
    catalog: Catalog,
    cache: BagCache | None,
    users: torch.Tensor,
    items: torch.Tensor,
    pairs: torch.Tensor | None = None,
    **options: Any,
) -> tuple[torch.Tensor, KeyedJaggedTensor, dict[int, tuple[torch.Tensor | None, torch.Tensor]] | None]:
    """A training batch of (user row, item row) pairs, each left out of its own bags: ``Catalog.batch``'s dense
    features and KJT (``options``: its other arguments), and the cached bags' values for the model (None without
    a cache), with the bags the cache holds left out of the KJT. ``pairs``: see ``BagCache.batch``."""
    skip, cached = cache.batch(users, items, pairs) if cache is not None else (None, None)
    dense, kjt = catalog.batch(users, items, leave_out=True, cached=skip, **options)
    return dense, kjt, cached
