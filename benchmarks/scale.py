"""Where dlrm stands on MovieLens-25M-class data: each step's time and the process's peak memory.

    .venv/bin/python benchmarks/ml25m_shape.py /tmp/ml25m       # once: ratings of ML-25M's shape
    .venv/bin/python benchmarks/scale.py /tmp/ml25m [--steps 100] [--caps 128,512] [--batch-size 256]
                                                    [--heavy 0:10,0:30] [--no-exact]

Reads the release as ``dlrm train --data movielens:DIR`` does (parse, splits, vocabularies and features, then the
implicit-feedback bags), builds the MovieLens model with its default settings, trains ``--steps`` batches with
the bags, as many with the bags cut to each of ``--caps`` members (``dlrm train --bag-cap N``), with each
``--heavy`` N:R (``dlrm train --heavy-bags N --bag-refresh R``, its refreshes included) and as many without
them, and prints samples/s and the epoch time they imply. The epoch times are extrapolated from those batches (a
whole epoch with the bags takes hours), and labelled so.
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
    from dlrm_cli.training.bag_cache import BagCache, training_batch
    from dlrm_cli.training.run import model_config_for, train_step

    model, optimizers = build_for_training(model_config_for(data, settings), settings, torch.device("cpu"))
    train, catalog, size = data.train, data.catalog, settings.batch_size
    cache = None
    if settings.heavy_bags is not None:
        cache = BagCache(model, catalog, settings.heavy_bags, settings.bag_refresh, (train.user, train.item))
        cache.start()
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    for step in range(steps + 5):
        if step == 5:
            started = time.perf_counter()
        rows = order[step * size : (step + 1) * size]
        users, items = train.user[rows], train.item[rows]
        dense, kjt, cached = training_batch(catalog, cache, users, items, rows, context=train.context_of(rows))
        train_step(model, optimizers, dense, kjt, train.rating[rows], settings.embedding_l2, cached=cached)
        if cache is not None:
            cache.step_done()
    return steps * size / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--steps", type=int, default=100, help="training batches measured each way (default 100)")
    parser.add_argument("--caps", default="128,512", help="bag caps measured, comma-separated (default 128,512)")
    parser.add_argument("--batch-size", type=int, default=256, help="samples a batch (default 256, dlrm's)")
    parser.add_argument("--heavy", default="", help="N:R pairs of --heavy-bags N --bag-refresh R, comma-separated")
    parser.add_argument("--no-exact", dest="exact", action="store_false", help="skip the run with every bag whole")
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
    settings = TrainConfig(batch_size=args.batch_size)
    runs = [("training with the bags", lambda: data, None, 10)] if args.exact else []
    for cap in (int(value) for value in args.caps.split(",") if value):
        runs.append((f"training, bags capped at {cap}", lambda cap=cap: with_bags(plain, cap, settings.seed), None, 10))
    for pair in (value for value in args.heavy.split(",") if value):
        heavy, refresh = (int(part) for part in pair.split(":"))
        runs.append((f"training, --heavy-bags {heavy} --bag-refresh {refresh}", lambda: data, heavy, refresh))
    runs.append(("training without them", lambda: replace(data, catalog=data.catalog.without_bags()), None, 10))
    for label, run_data, heavy, refresh in runs:
        started = time.perf_counter()
        rate = train_rate(run_data(), replace(settings, heavy_bags=heavy, bag_refresh=refresh), args.steps)
        epoch = len(data.train) / rate / 60
        timed(label, started, f"{rate:,.0f} samples/s, an epoch {epoch:,.1f} min (extrapolated); ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
