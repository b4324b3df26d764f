"""Does the default `dlrm train` fit data of any size? The default run against a small grid over the learning
rate and its decay, on generated rating CSVs of 10k, 100k and 1M rows with a known noise floor.

    .venv/bin/python benchmarks/first_hour.py [--sizes 10k,100k,1m] [--seed 0] [--grid 3e-4:0.6,1e-3:0.8,...]

Each CSV is drawn by the built-in data's generator (``dlrm_cli.data.synthetic``: biases, latent tastes, effects
of observable features, Gaussian noise, clipped to 0..5), then written as a user would have it: customer, sku,
stars, the item's price and popularity, the user's age and discount usage, the item's category, and each
rating's context (its channel and hour, which dlrm reads as context columns). Its noise
floor is the RMSE of E[clip(mu + noise)] on every row, the prediction of a model that knows every hidden
parameter. Every run is `dlrm train --data csv:... --retrieval none` with the same columns (the ranking
stage trains after the rating model and the same way whatever its schedule, so it is left out of every run);
the grid's runs set `--lr` and `--lr-gamma` with the step schedule (decayed every epoch) and keep every other
default. Each figure is the run's best validation RMSE (the checkpoint's) and its wall time (the whole
command: loading the data, training, saving), all measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dlrm_cli.config import SyntheticSpec
from dlrm_cli.data.synthetic import draw, expected_clipped

SIZES = {  # rows: (users, items)
    "10k": (10_000, 500, 200),
    "100k": (100_000, 3_000, 500),
    "1m": (1_000_000, 20_000, 4_000),
}
GRID = ((3e-4, 0.6), (1e-3, 0.6), (1e-3, 0.8), (3e-3, 0.8), (3e-3, 0.6), (1e-3, 0.9))
COLUMNS = [
    "--user-col", "customer", "--item-col", "sku", "--rating-col", "stars",
    "--dense-cols", "price,popularity,age,discount_usage,hour", "--sparse-cols", "category,channel",
]  # fmt: skip


def write_csv(size: str, seed: int, folder: Path) -> tuple[Path, float]:
    """The generated CSV of ``size`` rows, and its noise floor."""
    rows, users, items = SIZES[size]
    spec = SyntheticSpec(users=users, items=items, ratings=rows, seed=seed)
    draws = draw(spec)
    truth = draws.truth
    frame = pd.DataFrame(
        {
            "customer": truth.user,
            "sku": truth.item,
            "stars": draws.rating.round(3),
            "price": draws.item_raw[truth.item, 0].round(2),
            "popularity": draws.item_raw[truth.item, 1].round(3),
            "age": draws.user_raw[truth.user, 0].round(1),
            "discount_usage": draws.user_raw[truth.user, 6].round(3),
            "category": truth.category[truth.item],
            "channel": draws.context.sparse["channel"],  # the context of each rating
            "hour": draws.truth.context.hour,
        }
    )
    path = folder / f"ratings-{size}.csv"
    frame.to_csv(path, index=False)
    best = expected_clipped(truth.mean, spec.noise, 0.0, 5.0)
    return path, float(np.sqrt(np.mean((best - draws.rating) ** 2)))


def warm_cache(path: Path, store: Path) -> None:
    """Parse the CSV once, as ``dlrm train`` does, so that no timed run pays for the first parse (later ones
    read the parsed copy from the cache)."""
    from dlrm_cli.data.sources import load_dataset
    from dlrm_cli.training.request import python_options, request_from_options

    options = dict(zip(COLUMNS[::2], COLUMNS[1::2], strict=True))
    values, given = python_options({key[2:].replace("-", "_"): value for key, value in options.items()})
    values["data"] = f"csv:{path}"
    load_dataset(request_from_options(values, given, given, store=store).config.data)


def run(path: Path, store: Path, name: str, extra: list[str]) -> dict[str, float]:
    command = [sys.executable, "-m", "dlrm_cli", "train", "--data", f"csv:{path}", *COLUMNS, "--name", name]
    env = {**os.environ, "DLRM_CHECKPOINT_DIR": str(store)}
    started = time.perf_counter()
    done = subprocess.run([*command, *extra], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command + extra)} failed:\n{done.stderr[-2000:]}")
    meta = json.loads((store / name / "meta.json").read_text())
    history = meta["history"]
    return {"rmse": meta["metrics"]["validation"]["rmse"], "seconds": seconds, "epochs": len(history)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10k,100k,1m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=",".join(f"{lr:g}:{gamma:g}" for lr, gamma in GRID))
    parser.add_argument(
        "--extra",
        default="--retrieval none",
        help="options for every run (default: no ranking stage, which the rating model's schedule does not change)",
    )
    args = parser.parse_args()
    grid = [tuple(float(x) for x in cell.split(":")) for cell in args.grid.split(",")]
    extra = args.extra.split()
    print("| data | noise floor | run | best val RMSE | vs grid best | epochs | seconds |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in args.sizes.split(","):
            path, floor = write_csv(size, args.seed, folder)
            store = folder / f"store-{size}"
            warm_cache(path, store)
            results = {"default": run(path, store, "default", extra)}
            for lr, gamma in grid:
                options = ["--lr", f"{lr:g}", "--lr-gamma", f"{gamma:g}", "--lr-schedule", "step"]
                results[f"--lr {lr:g} --lr-gamma {gamma:g}"] = run(path, store, f"lr{lr:g}-g{gamma:g}", options + extra)
            best = min(r["rmse"] for key, r in results.items() if key != "default")
            median = statistics.median(r["seconds"] for key, r in results.items() if key != "default")
            for key, r in results.items():
                print(
                    f"| {size} | {floor:.4f} | {key} | {r['rmse']:.4f} | {r['rmse'] / best - 1:+.1%} "
                    f"| {r['epochs']} | {r['seconds']:.0f} |"
                )
            default = results["default"]
            print(
                f"| {size} | | **default vs grid** | within {default['rmse'] / best - 1:+.1%} of the grid's best "
                f"| | time {default['seconds'] / median:.2f}x the grid's median ({median:.0f} s) | |"
            )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
