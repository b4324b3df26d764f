"""Memory of the implicit-feedback bags at MovieLens 25M's sizes: can dlrm train such data here?

    .venv/bin/python benchmarks/bags_memory.py [--ratings 25000095] [--users 162541] [--items 59047] [--steps 200]

Generates synthetic ratings of those sizes (heavy-tailed: active users and popular items rate most, as in
MovieLens), builds the bags from the training rows, builds the default model and trains ``--steps`` batches,
then prints the bags' size (values and offsets, stored jagged) and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from dlrm_cli.config import SyntheticSpec, TrainConfig
from dlrm_cli.data.catalog import with_bags
from dlrm_cli.data.synthetic import generate
from dlrm_cli.model.optim import build_for_training
from dlrm_cli.training.run import model_config_for, train_step


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=25_000_095)
    parser.add_argument("--users", type=int, default=162_541)
    parser.add_argument("--items", type=int, default=59_047)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    started = time.perf_counter()
    data = generate(SyntheticSpec(users=args.users, items=args.items, ratings=args.ratings))
    print(
        f"data: {len(data.train):,} training ratings ({time.perf_counter() - started:.0f} s), peak {peak_gib():.1f} GiB"
    )
    started = time.perf_counter()
    data = with_bags(data)
    bags = [data.catalog.users.bags["rated_items"], data.catalog.items.bags["raters"]]
    size = sum(bag.values.numel() * 8 + bag.offsets.numel() * 8 for bag in bags)
    longest = [int((bag.offsets[1:] - bag.offsets[:-1]).max()) for bag in bags]
    print(
        f"bags: {size / 2**30:.2f} GiB jagged (longest: a user's {longest[0]:,} items, an item's {longest[1]:,} "
        f"users), built in {time.perf_counter() - started:.0f} s; peak {peak_gib():.1f} GiB"
    )
    settings = TrainConfig()
    model, optimizers = build_for_training(model_config_for(data, settings), settings, torch.device("cpu"))
    train, catalog = data.train, data.catalog
    order = torch.randperm(len(train))
    started = time.perf_counter()
    for step in range(args.steps):
        rows = order[step * settings.batch_size : (step + 1) * settings.batch_size]
        dense, kjt = catalog.batch(train.user[rows], train.item[rows], leave_out=True)
        train_step(model, optimizers, dense, kjt, train.rating[rows], settings.embedding_l2)
    rate = args.steps * settings.batch_size / (time.perf_counter() - started)
    print(f"training: {args.steps} batches of {settings.batch_size}, {rate:,.0f} samples/s; peak {peak_gib():.1f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
