"""What the ranking stage loses when each fold draws its training pairs from a sample of its users.

    .venv/bin/python benchmarks/ranker_users.py [--users 1000,none] [--seed 0]

Trains the MovieLens 1M subset's default two-stage model (``dlrm train --data movielens:DIR``, 10 epochs) once
for each limit on the users whose pairs a fold draws (``PairSettings.users``; ``none``: every user; dlrm's
default, 8,000, is above the subset's 2,999 users) and prints the two stages' validation NDCG@10 and
the wall time of the ranking stage. At MovieLens 25M's 162,541 users every user costs a full ranking of the
catalogue a fold, which is what the limit bounds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m-subset"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="1000,none", help="limits, comma-separated (none: every user)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import dlrm_cli.training.run as run
    import dlrm_cli.training.stages as stages
    from dlrm_cli import api

    default, fit = stages.PAIRS, run.train_stages
    timer = {}

    def timed(*args, **kwargs):
        started = time.perf_counter()
        result = fit(*args, **kwargs)
        timer["seconds"] = time.perf_counter() - started
        return result

    run.train_stages = timed
    for limit in args.users.split(","):
        stages.PAIRS = replace(default, users=None if limit == "none" else int(limit))
        with tempfile.TemporaryDirectory() as store:
            model = api.train(f"movielens:{DATA}", store=store, seed=args.seed)
            metrics = model.meta["stages"]["metrics"]
        figures = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items())
        print(f"users a fold {limit:>5}: {figures}; ranking stage {timer['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
