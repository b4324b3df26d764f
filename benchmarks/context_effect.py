"""Does dlrm learn a context effect? Generated CSV data whose ratings depend on each rating's own context,
trained with its context columns and without them, against the Bayes-optimal RMSE of the same rows.

    .venv/bin/python benchmarks/context_effect.py [--seeds 3] [--users 200] [--items 100] [--ratings 100000]

The data (per seed) is generated as rating = clip(mu + noise, 1, 5), noise ~ N(0, 0.7^2), with mu the sum of
a global mean, user and item biases, a dot product of user and item factors (rank 4), and the effect of the
rating's context: ``channel`` (web, app or email, drawn per rating with shares 0.5, 0.3, 0.2), whose effect
depends on the item's ``category`` (an offset per channel and category), and ``hour`` (0-23, uniform), a
daily cycle. The CSV has the columns user, item, rating, category (a side column of the items), channel and
hour; channel and hour vary within users and within items, so dlrm reads them as context columns.

Two `dlrm train` runs per seed on the same file, split and settings: one given ``--sparse-cols
category,channel --dense-cols hour``, one given ``--sparse-cols category`` only. Each reports its best
validation RMSE. On the same validation rows:

- Bayes-optimal with context: E[clip(mu + noise)], every hidden parameter and the context known (the noise
  floor);
- Bayes-optimal without context: every hidden parameter known but not the context, E[clip(mu + noise)]
  averaged over the channels and hours the generator draws: the best any model without the context can do.

The target: with its context columns, dlrm within 3% of the Bayes-optimal RMSE with context.
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dlrm_cli.data.features import split_rows
from dlrm_cli.data.readers import RawData
from dlrm_cli.data.synthetic import expected_clipped

CHANNELS = ("web", "app", "email")
SHARES = (0.5, 0.3, 0.2)
LOW, HIGH = 1.0, 5.0
NOISE = 0.7
FACTORS = 4
CATEGORIES = 8
HOUR_EFFECT = 0.25  # amplitude of the daily cycle: lowest at midnight, highest at noon
CHANNEL_EFFECT = 0.35  # deviation of the channel-by-category offsets
SPLIT, VALIDATION = "random:0.1", 0.1
TARGET = 0.03  # with context, within this of the Bayes-optimal RMSE


@dataclass(frozen=True)
class Generated:
    """The ratings with their context, and what the generator knows of each: mu in each context."""

    frame: pd.DataFrame
    base: np.ndarray  # mu without the context effect
    category: np.ndarray  # of each rating's item
    channel: np.ndarray  # of each rating, an index of CHANNELS
    hour: np.ndarray  # of each rating
    channel_category: np.ndarray  # channels x categories

    def mean_in(self, channel: np.ndarray | int, hour: np.ndarray | int) -> np.ndarray:
        """Each rating's mu had it come through ``channel`` at ``hour``."""
        daily = -HOUR_EFFECT * np.cos(2 * np.pi * np.asarray(hour, dtype=np.float64) / 24)
        return self.base + self.channel_category[channel, self.category] + daily

    def best_with_context(self) -> np.ndarray:
        return expected_clipped(self.mean_in(self.channel, self.hour), NOISE, LOW, HIGH)

    def best_without_context(self) -> np.ndarray:
        total = np.zeros(len(self.base))
        for channel, share in enumerate(SHARES):
            for hour in range(24):
                total += share / 24 * expected_clipped(self.mean_in(channel, hour), NOISE, LOW, HIGH)
        return total


def generate(users: int, items: int, ratings: int, seed: int) -> Generated:
    """The generated ratings of ``seed``; the same arguments always give the same data."""
    rng = np.random.default_rng(seed)
    item_category = rng.integers(0, CATEGORIES, items)
    user_bias, item_bias = rng.normal(0, 0.3, users), rng.normal(0, 0.3, items)
    user_factors, item_factors = rng.normal(0, 0.4, (users, FACTORS)), rng.normal(0, 0.4, (items, FACTORS))
    user, item = rng.integers(0, users, ratings), rng.integers(0, items, ratings)
    base = 3.0 + user_bias[user] + item_bias[item] + np.einsum("nk,nk->n", user_factors[user], item_factors[item])
    channel = rng.choice(len(CHANNELS), ratings, p=SHARES)
    hour = rng.integers(0, 24, ratings)
    channel_category = rng.normal(0, CHANNEL_EFFECT, (len(CHANNELS), CATEGORIES))
    category = item_category[item]
    truth = Generated(pd.DataFrame(), base, category, channel, hour, channel_category)
    rating = np.clip(truth.mean_in(channel, hour) + rng.normal(0, NOISE, ratings), LOW, HIGH)
    frame = pd.DataFrame(
        {
            "user": [f"u{u}" for u in user],
            "item": [f"i{i}" for i in item],
            "rating": rating.round(4),
            "category": [f"c{c}" for c in category],
            "channel": np.array(CHANNELS)[channel],
            "hour": hour,
        }
    )
    return Generated(frame, base, category, channel, hour, channel_category)


def validation_rows(generated: Generated, seed: int) -> np.ndarray:
    """The rows `dlrm train --split random:0.1 --split-seed SEED --val-fraction 0.1` validates on."""
    frame = generated.frame
    raw = RawData(frame["user"].to_numpy(), frame["item"].to_numpy(), frame["rating"].to_numpy(), None, (LOW, HIGH))
    return split_rows(raw, SPLIT, seed, VALIDATION)["validation"]


def bayes_optimal(generated: Generated, rows: np.ndarray) -> dict[str, float]:
    """RMSE on ``rows`` of the best predictions with and without knowing the context."""
    actual = generated.frame["rating"].to_numpy()[rows]
    return {
        name: float(np.sqrt(np.mean((best[rows] - actual) ** 2)))
        for name, best in (
            ("with", generated.best_with_context()),
            ("without", generated.best_without_context()),
        )
    }


def train(path: Path, store: Path, name: str, seed: int, columns: list[str], options: list[str]) -> dict[str, float]:
    """One `dlrm train` run on ``path``; its best validation RMSE, validation count and wall time."""
    command = [
        *(sys.executable, "-m", "dlrm_cli", "train", "--data", f"csv:{path}", "--name", name, "--seed", str(seed)),
        *("--split", SPLIT, "--val-fraction", str(VALIDATION), "--rating-range", f"{LOW:g},{HIGH:g}"),
        *columns,
        *options,
    ]
    env = {**os.environ, "DLRM_CHECKPOINT_DIR": str(store)}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    meta = json.loads((store / name / "meta.json").read_text())
    validation = meta["counts"]["validation"]
    return {"rmse": meta["metrics"]["validation"]["rmse"], "count": validation, "seconds": seconds}


def run_seed(seed: int, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    generated = generate(args.users, args.items, args.ratings, seed)
    path = folder / f"ratings-{seed}.csv"
    generated.frame.to_csv(path, index=False)
    rows = validation_rows(generated, seed)
    floor = bayes_optimal(generated, rows)
    store, options = folder / f"store-{seed}", args.options.split()
    with_context = train(
        path, store, "with", seed, ["--sparse-cols", "category,channel", "--dense-cols", "hour"], options
    )
    without = train(path, store, "without", seed, ["--sparse-cols", "category"], options)
    if not with_context["count"] == without["count"] == len(rows):  # the rows the floor is computed on
        raise SystemExit(f"seed {seed}: dlrm validated on {with_context['count']} rows, the floor on {len(rows)}")
    return {
        "with": with_context["rmse"],
        "without": without["rmse"],
        "best_with": floor["with"],
        "best_without": floor["without"],
        "seconds": with_context["seconds"] + without["seconds"],
    }


def row(label: str, figures: dict[str, float]) -> str:
    gap = figures["with"] / figures["best_with"] - 1
    cells = [figures[key] for key in ("with", "without", "best_with", "best_without")]
    return (
        f"| {label} | "
        + " | ".join(f"{value:.4f}" for value in cells)
        + f" | {gap:+.1%} | {figures['seconds']:.0f} s |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="data and training seeds 0..N-1 (default 3)")
    parser.add_argument("--users", type=int, default=200, help="default 200")
    parser.add_argument("--items", type=int, default=100, help="default 100")
    parser.add_argument("--ratings", type=int, default=100_000, help="default 100,000")
    parser.add_argument("--options", default="", help="more `dlrm train` options for both runs, e.g. '--epochs 3'")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as name:
        for seed in range(args.seeds):
            results.append(run_seed(seed, args, Path(name)))
    print(f"Generated CSV data: {args.users:,} users, {args.items:,} items, {args.ratings:,} ratings; noise {NOISE}")
    print(
        "| seed | dlrm with context | dlrm without | Bayes-optimal with context | Bayes-optimal without | gap | time |"
    )
    print("|---|---|---|---|---|---|---|")
    for seed, figures in enumerate(results):
        print(row(str(seed), figures))
    mean = {key: statistics.mean(r[key] for r in results) for key in results[0]}
    print(row("mean", mean))
    gap = mean["with"] / mean["best_with"] - 1
    verdict = "met" if gap <= TARGET else "missed"
    print(f"gap: dlrm with context above the Bayes-optimal RMSE with context; target {TARGET:.0%}: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
