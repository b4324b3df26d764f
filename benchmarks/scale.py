"""Where dlrm stands on MovieLens-25M-class data: each step's time and the process's peak memory.

    .venv/bin/python benchmarks/ml25m_shape.py /tmp/ml25m       # once: ratings of ML-25M's shape
    .venv/bin/python benchmarks/scale.py /tmp/ml25m [--steps 100] [--caps 128,512]

Reads the release as ``dlrm train --data movielens:DIR`` does (parse, splits, vocabularies and features, then the
implicit-feedback bags), builds the MovieLens model with its default settings, trains ``--steps`` batches with
the bags, as many with the bags cut to each of ``--caps`` members (``dlrm train --bag-cap N``) and as many
without them, and prints samples/s and the epoch time they imply. The epoch times are
extrapolated from those batches (a whole epoch with the bags takes hours), and labelled so.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def timed(label: str, started: float, detail: str = "") -> None:
    print(f"{label:<28} {time.perf_counter() - started:7.1f} s  {detail}peak {peak_gib():.1f} GiB", flush=True)


def train_rate(data, settings, steps: int) -> float:
    """Samples/s of ``steps`` training batches of the default model (after 5 unmeasured ones)."""
    from dlrm_cli.model.optim import build_for_training
    from dlrm_cli.training.run import model_config_for, train_step

    model, optimizers = build_for_training(model_config_for(data, settings), settings, torch.device("cpu"))
    train, catalog, size = data.train, data.catalog, settings.batch_size
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    for step in range(steps + 5):
        if step == 5:
            started = time.perf_counter()
        rows = order[step * size : (step + 1) * size]
        dense, kjt = catalog.batch(train.user[rows], train.item[rows], leave_out=True, context=train.context_of(rows))
        train_step(model, optimizers, dense, kjt, train.rating[rows], settings.embedding_l2)
    return steps * size / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--steps", type=int, default=100, help="training batches measured each way (default 100)")
    parser.add_argument("--caps", default="128,512", help="bag caps measured, comma-separated (default 128,512)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DLRM_CACHE_DIR"] = cache
        from dlrm_cli.config import TrainConfig
        from dlrm_cli.data.catalog import with_bags
        from dlrm_cli.data.sources import load_dataset, load_raw, parse_data_option

        source = parse_data_option(f"movielens:{args.folder}")
        started = time.perf_counter()
        raw, _ = load_raw(source)
        timed("parse", started, f"{len(raw):,} rows; ")
        started = time.perf_counter()
        data = load_dataset(source)
        timed("splits and features", started, f"{len(data.train):,} training rows; ")
    started = time.perf_counter()
    plain, data = data, with_bags(data)
    bags = [data.catalog.users.bags["rated_items"], data.catalog.items.bags["raters"]]
    longest = [int((bag.offsets[1:] - bag.offsets[:-1]).max()) for bag in bags]
    owners = (data.train.user, data.train.item)
    rows = sum(float(bag.sizes(of).double().mean()) for bag, of in zip(bags, owners, strict=True))
    timed("bags", started, f"longest a user's {longest[0]:,} and an item's {longest[1]:,}; {rows:,.0f} a sample; ")
    settings = TrainConfig()
    runs = [("training with the bags", lambda: data)]
    for cap in (int(value) for value in args.caps.split(",") if value):
        runs.append((f"training, bags capped at {cap}", lambda cap=cap: with_bags(plain, cap, settings.seed)))
    runs.append(("training without them", lambda: replace(data, catalog=data.catalog.without_bags())))
    for label, run_data in runs:
        started = time.perf_counter()
        rate = train_rate(run_data(), settings, args.steps)
        epoch = len(data.train) / rate / 60
        timed(label, started, f"{rate:,.0f} samples/s, an epoch {epoch:,.1f} min (extrapolated); ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
