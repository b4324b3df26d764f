"""What each way of making the implicit-feedback bags cheaper costs in accuracy, on the MovieLens 1M subset.

    .venv/bin/python benchmarks/bag_levers.py [--epochs 2] [--lever exact|sampled|heavy|cap|grouped|no-item-bags|
                                              delayed]
                                              [--draws 64] [--refresh 1] [--heavy 256] [--cap 128] [--group 16]

An experiment harness, not part of dlrm: it trains the MovieLens model with its default settings (as ``dlrm
train --data movielens:DIR --retrieval none`` does, split seed 0, torch seed 0) for ``--epochs`` epochs and
prints each epoch's validation RMSE, scored on the full bags. For a lever it swaps ``Bag.gather`` (which members a
training sample looks up) and the model's bag scaling (``RatingDLRM._normalise_bags``):

- ``exact``: what dlrm does: every member of the user's and the item's bag, less the rating's own.
- ``sampled``: the pooled value comes from a cache of every bag's exact sum, recomputed from the tables every
  ``--refresh`` steps; the gradient reaches ``--draws`` members drawn with replacement, weighted to be unbiased.
  A sample's cost no longer grows with its bags.
- ``heavy``: ``sampled`` for bags of more than ``--heavy`` members, ``exact`` for the rest.
- ``cap``: each bag keeps a fixed random ``--cap`` of its members (drawn once), as if the rest were not there.
- ``grouped``: exact bags, batches made of runs of ``--group`` ratings of one user, so a user's bag is pooled
  once a run (what fast SVD++ implementations do).
- ``no-item-bags``: exact user bags, no item bags.
- ``delayed``: every bag's value comes from the cache of pooled sums (less the rating's own member), one row a
  sample whatever the bag's size; the exact gradient reaches every member, but summed over ``--refresh`` steps and
  applied then (with the tables' Adagrad), just before the cache is recomputed.

It prints the bag members a sample looks up (the cost that grows with the data) and samples/s, which the
harness's own Python slows; compare the RMSEs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlrm_cli.config import TrainConfig
from dlrm_cli.data.catalog import Bag, Dataset, with_bags
from dlrm_cli.data.sources import load_dataset, parse_data_option
from dlrm_cli.model.dlrm import RatingDLRM, table_name
from dlrm_cli.model.optim import build_for_training
from dlrm_cli.scoring.metrics import evaluate_split
from dlrm_cli.training.run import model_config_for, train_step

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m-subset"
EXACT_GATHER, EXACT_SCALE = Bag.gather, RatingDLRM._normalise_bags


def owners_of(bag: Bag) -> torch.Tensor:
    """The owner row of each of the bag's values."""
    return torch.repeat_interleave(torch.arange(bag.offsets.shape[0] - 1), bag.offsets.diff())


class Lever:
    """The swapped-in gather and scaling, and the cache of each bag's pooled sums that they read."""

    def __init__(self, args: argparse.Namespace, data: Dataset, model: RatingDLRM) -> None:
        self.args, self.model, self.cache, self.log, self.looked_up = args, model, {}, [], 0
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.state: dict[int, torch.Tensor] = {}
        self.bags = {
            id(bag): (bag, name) for t in (data.catalog.users, data.catalog.items) for name, bag in t.bags.items()
        }
        for bag, _ in self.bags.values():  # (owner, member) keys, sorted: how often a member is in a bag
            bag.owners = owners_of(bag)
            bag.keys = bag.owners * (bag.table_rows + 1) + bag.values
        Bag.gather = lambda bag, rows, leave_out=None: self.gather(bag, rows, leave_out)  # type: ignore[method-assign]
        RatingDLRM._normalise_bags = lambda model, embedded, features: self.scale(model, embedded, features)  # type: ignore[method-assign]

    def refresh(self) -> None:
        weights = self.model.dlrm.sparse_arch.embedding_bag_collection.state_dict()
        for bag, name in self.bags.values():
            table = weights[f"embedding_bags.{table_name(name)}.weight"].detach().clone()
            self.cache[id(bag)] = (table, nn.functional.embedding_bag(bag.values, table, bag.offsets[:-1], mode="sum"))

    def gather(self, bag: Bag, rows: torch.Tensor, leave_out: torch.Tensor | None = None):
        if leave_out is None or self.args.lever not in ("sampled", "heavy", "delayed"):
            values, lengths = EXACT_GATHER(bag, rows, leave_out)
            self.looked_up += values.numel() if leave_out is not None else 0
            return values, lengths
        starts, sizes = bag.offsets[rows], bag.sizes(rows)
        key = rows * (bag.table_rows + 1) + leave_out
        copies = torch.searchsorted(bag.keys, key, right=True) - torch.searchsorted(bag.keys, key)
        if self.args.lever == "delayed":  # nothing for the tables to look up: the cache answers
            self.log.append((bag, rows, leave_out, copies, sizes, None, None))
            return bag.values[:0], torch.zeros_like(rows)
        sampled = sizes > (self.args.heavy if self.args.lever == "heavy" else -1)
        exact_values, exact_lengths = EXACT_GATHER(bag, rows[~sampled], leave_out[~sampled])
        draws = (
            starts[sampled].unsqueeze(1)
            + (torch.rand(int(sampled.sum()), self.args.draws) * sizes[sampled].unsqueeze(1)).long()
        )
        drawn = bag.values[draws.clamp(max=bag.values.shape[0] - 1)]
        keep = (drawn != leave_out[sampled].unsqueeze(1)) & (sizes[sampled] > 0).unsqueeze(1)
        lengths = torch.zeros_like(rows)
        lengths[~sampled], lengths[sampled] = exact_lengths, keep.sum(1)
        owner = torch.cat(
            (
                torch.repeat_interleave(torch.nonzero(~sampled).flatten(), exact_lengths),
                torch.nonzero(sampled).flatten().unsqueeze(1).expand_as(keep)[keep],
            )
        )
        values = torch.cat((exact_values, drawn[keep]))[torch.sort(owner, stable=True).indices]
        self.log.append((bag, rows, leave_out, copies, sizes, lengths, sampled))
        self.looked_up += values.numel()
        return values, lengths

    def delayed(self, bag: Bag, rows, left_out, copies, sizes, rest) -> torch.Tensor:
        """The cached pooled value, whose gradient is kept (per bag owner, and per left-out member) until
        ``apply_delayed``."""
        table, sums = self.cache[id(bag)]
        norm = rest.rsqrt() * (sizes > copies)
        value = ((sums[rows] - copies.unsqueeze(1) * table[left_out]) * norm.unsqueeze(1)).requires_grad_()
        pending, direct = self.pending[id(bag)]

        def keep(grad: torch.Tensor) -> None:
            pending.index_add_(0, rows, grad * norm.unsqueeze(1))
            direct.index_add_(0, left_out, -grad * (copies * norm).unsqueeze(1))

        value.register_hook(keep)
        return value

    def apply_delayed(self) -> None:
        """Each member's gradient, summed over the bags holding it, as one Adagrad step (``torch.optim.Adagrad``,
        as the tables' own optimizer)."""
        if self.args.lever != "delayed":
            return
        weights = self.model.dlrm.sparse_arch.embedding_bag_collection.state_dict()
        for bag, name in self.bags.values():
            table = weights[f"embedding_bags.{table_name(name)}.weight"]
            if id(bag) not in self.pending:
                self.pending[id(bag)] = (torch.zeros(bag.offsets.shape[0] - 1, table.shape[1]), torch.zeros_like(table))
                self.state[id(bag)] = torch.zeros_like(table)
                continue
            pending, direct = self.pending[id(bag)]
            grad = direct.index_add(0, bag.values, pending[bag.owners])
            state = self.state[id(bag)]
            steps = self.args.refresh if self.args.catch_up else 1  # as that many steps of the window's mean
            state.add_(grad * grad / steps)
            table.sub_(self.args.sparse_lr * grad / (state.sqrt() + 1e-10))
            pending.zero_(), direct.zero_()

    def scale(self, model: RatingDLRM, embedded: torch.Tensor, features) -> torch.Tensor:
        if not self.log:
            return EXACT_SCALE(model, embedded, features)
        pieces = list(embedded.unbind(1))
        for (bag, rows, left_out, copies, sizes, lengths, sampled), position in zip(
            self.log, model.bag_positions, strict=True
        ):
            table, sums = self.cache[id(bag)]
            rest = (sizes - copies).clamp(min=1).to(embedded.dtype)
            if sampled is None:
                pieces[position] = self.delayed(bag, rows, left_out, copies, sizes, rest)
                continue
            cached = (sums[rows] - copies.unsqueeze(1) * table[left_out]) * (rest.rsqrt() * (sizes > copies)).unsqueeze(
                1
            )
            drawn = embedded[:, position] * (rest.sqrt() / lengths.clamp(min=1)).unsqueeze(1)
            exact = embedded[:, position] * lengths.clamp(min=1).to(embedded.dtype).rsqrt().unsqueeze(1)
            pieces[position] = torch.where(sampled.unsqueeze(1), cached + drawn - drawn.detach(), exact)
        self.log.clear()
        return torch.stack(pieces, dim=1)


def prepared(args: argparse.Namespace) -> Dataset:
    data = with_bags(load_dataset(parse_data_option(f"movielens:{args.data}")))
    if args.lever == "no-item-bags":
        data.catalog.items.bags.clear()
    if args.lever == "cap":  # a fixed random subset of each bag
        for table in (data.catalog.users, data.catalog.items):
            for name, bag in table.bags.items():
                owners = owners_of(bag).numpy()
                order = np.lexsort((np.random.default_rng(1).random(len(owners)), owners))
                rank = np.arange(len(owners)) - bag.offsets.numpy()[owners]
                kept = np.sort(order[rank < args.cap])
                table.bags[name] = Bag.build(
                    owners[kept], bag.values.numpy()[kept], bag.offsets.shape[0] - 1, bag.table_rows
                )
    return data


def epoch_order(data: Dataset, args: argparse.Namespace) -> torch.Tensor:
    """A shuffled epoch; for ``grouped``, shuffled runs of ``--group`` ratings of one user."""
    shuffled = torch.randperm(len(data.train))
    if args.lever != "grouped":
        return shuffled
    users = data.train.user[shuffled]
    by_user = torch.argsort(users, stable=True)
    shuffled, users = shuffled[by_user], users[by_user]
    rank = torch.arange(len(users)) - torch.searchsorted(users, users)
    runs = torch.unique(users * len(users) + rank // args.group, return_inverse=True)[1]
    return shuffled[torch.argsort(torch.randperm(int(runs.max()) + 1)[runs] * args.group + rank % args.group)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--lever", default="exact", choices=["exact", "sampled", "heavy", "cap", "grouped", "no-item-bags", "delayed"]
    )
    parser.add_argument("--draws", type=int, default=64)
    parser.add_argument("--refresh", type=int, default=1)
    parser.add_argument("--heavy", type=int, default=256)
    parser.add_argument("--cap", type=int, default=128)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--catch-up", action="store_true", help="delayed: apply the sum as --refresh mean steps")
    args = parser.parse_args()
    torch.manual_seed(0)
    data, settings = prepared(args), TrainConfig(retrieval="none")
    args.sparse_lr = settings.sparse_lr
    model, optimizers = build_for_training(model_config_for(data, settings), settings, torch.device("cpu"))
    lever, steps, train = Lever(args, data, model), 0, data.train
    for epoch in range(1, args.epochs + 1):
        order, started, lever.looked_up = epoch_order(data, args), time.perf_counter(), 0
        for start in range(0, len(train), settings.batch_size):
            if args.lever in ("sampled", "heavy", "delayed") and steps % args.refresh == 0:
                lever.apply_delayed()
                lever.refresh()
            rows = order[start : start + settings.batch_size]
            dense, kjt = data.catalog.batch(
                train.user[rows], train.item[rows], leave_out=True, context=train.context_of(rows)
            )
            train_step(model, optimizers, dense, kjt, train.rating[rows], settings.embedding_l2)
            steps += 1
        rate = len(train) / (time.perf_counter() - started)
        rmse = evaluate_split(model, data.catalog, data.validation, torch.device("cpu"))["rmse"]
        print(
            f"{args.lever} epoch {epoch}: validation RMSE {rmse:.4f}, "
            f"{lever.looked_up / len(train):,.0f} bag members a sample, {rate:,.0f} samples/s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
