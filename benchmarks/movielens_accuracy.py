"""Accuracy benchmark: dlrm on the MovieLens 1M subset with the agreed 90/10 seed-0 split.

    .venv/bin/python benchmarks/movielens_accuracy.py [DATA_DIR]

Trains with the MovieLens defaults (`dlrm train --data movielens:DIR --seed 0`), evaluates on the test
rows, and prints the figures beside scikit-surprise 1.1.5's on exactly the same split. The settings were
chosen on validation rows taken from the training part; the test rows are only read here, by evaluate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-1m-subset"
SURPRISE = [  # scikit-surprise 1.1.5, default settings, same split (test RMSE, test MAE)
    ("global mean", 1.1157, None),
    ("BaselineOnly (biases)", 0.9072, 0.7188),
    ("SVD", 0.8791, 0.6915),
    ("SVD++", 0.8698, 0.6800),
]


def main() -> int:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DATA
    if not (data / "ratings.dat").is_file():
        print(f"no MovieLens ratings in {data}", file=sys.stderr)
        return 2
    dlrm = [sys.executable, "-m", "dlrm_cli"]
    with tempfile.TemporaryDirectory() as store:
        env = {**os.environ, "DLRM_CHECKPOINT_DIR": store}
        started = time.perf_counter()
        train = [*dlrm, "train", "--data", f"movielens:{data}", "--seed", "0", "--name", "ml1m"]
        subprocess.run(train, env=env, check=True, capture_output=True)
        seconds = time.perf_counter() - started
        report = json.loads(
            subprocess.run([*dlrm, "evaluate", "--json"], env=env, check=True, capture_output=True, text=True).stdout
        )
        meta = json.loads((Path(store) / "ml1m" / "meta.json").read_text())
    model = report["model"]
    print(f"MovieLens 1M subset, 90/10 split with seed 0: {report['count']:,} test ratings")
    print(f"{'model':<24} {'test RMSE':>9} {'test MAE':>9}")
    for name, rmse, mae in SURPRISE:
        print(f"{name:<24} {rmse:>9.4f} {'' if mae is None else format(mae, '.4f'):>9}")
    print(f"{'dlrm (this run)':<24} {model['rmse']:>9.4f} {model['mae']:>9.4f}")
    print(
        f"dlrm: {len(meta['history'])} epochs (best {meta['best_epoch']}), validation RMSE "
        f"{meta['metrics']['validation']['rmse']:.4f}, {seconds:.0f} s including data loading"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
