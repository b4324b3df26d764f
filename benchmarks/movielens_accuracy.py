"""Accuracy benchmark: dlrm and its peers on the MovieLens 1M subset, agreed 90/10 seed-0 split, one run.

    make peers                                        # once: myFM and scikit-surprise in their own venvs
    .venv/bin/python benchmarks/movielens_accuracy.py [DATA_DIR] [--seeds 3] [--peers myfm-mf,myfm-bags,svdpp]
                                                      [--dlrm-options "--retrieval none"]

dlrm trains with `dlrm train --data movielens:DIR --split-seed 0 --seed S` (the MovieLens defaults) for each
seed S, and `dlrm evaluate` scores the test rows. Its settings were chosen on validation rows taken from the
training part; the test rows are only read by evaluate. The peers are fitted on the same training rows (all
of them: they hold nothing out) and scored on the same test rows, each in its own process and environment
(`benchmarks/peers.py`; myFM in .venv-myfm, scikit-surprise, which needs numpy<2, in .venv-surprise). A peer
whose environment is missing is skipped with a note. Wall times are whole processes: imports, data, fitting
and scoring, measured here one after another on an otherwise idle machine.
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

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-1m-subset"
PEERS = {  # name: (label, environment, seeded)
    "myfm-mf": ("myFM Bayesian MF, ids, rank 10, 200 iterations", ".venv-myfm", True),
    "myfm-bags": ("myFM Bayesian FM + implicit bags, rank 10", ".venv-myfm", True),
    "svdpp": ("scikit-surprise SVD++ (defaults)", ".venv-surprise", False),
}


def agreed_split(data: Path, folder: Path) -> Path:
    """PROVENANCE.md's split: default_rng(0).permutation(n), the first n // 10 rows are the test set."""
    lines = (data / "ratings.dat").read_text().split()
    table = np.array([line.split("::")[:3] for line in lines], dtype=np.int64)
    order = np.random.default_rng(0).permutation(len(table))
    test, train = np.sort(order[: len(table) // 10]), np.sort(order[len(table) // 10 :])
    path = folder / "split.npz"
    np.savez(
        path,
        **{f"{part}_{column}": table[rows, index] for part, rows in (("train", train), ("test", test))
           for index, column in enumerate(("user", "item", "rating"))},
    )  # fmt: skip
    return path


def timed(command: list[str], env: dict[str, str]) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return done.stdout, seconds


def run_dlrm(data: Path, seed: int, store: Path, env: dict[str, str], options: list[str]) -> dict[str, float]:
    dlrm = [sys.executable, "-m", "dlrm_cli"]
    name = f"seed{seed}"
    train = [*dlrm, "train", "--data", f"movielens:{data}", "--split-seed", "0", "--seed", str(seed), "--name", name]
    train += options
    _, seconds = timed(train, env)
    report = json.loads(timed([*dlrm, "evaluate", "--checkpoint", name, "--json"], env)[0])
    meta = json.loads((store / name / "meta.json").read_text())
    return {
        "rmse": report["model"]["rmse"],
        "mae": report["model"]["mae"],
        "count": report["count"],
        "seconds": seconds,
        "val_rmse": meta["metrics"]["validation"]["rmse"],
        "epochs": len(meta["history"]),
        "best_epoch": meta["best_epoch"],
    }


def averaged(store: Path, seeds: int, runs: list[dict[str, float]]) -> dict[str, float]:
    """The seeds' models as one: each test rating predicted as the mean of their predictions (the averaging a
    Bayesian model does over its posterior samples, here over a few independently trained models)."""
    from dlrm_cli.scoring.evaluation import score_ratings
    from dlrm_cli.store.loading import open_model

    started = time.perf_counter()
    predictions = []
    for seed in range(seeds):
        scored = score_ratings(open_model(store, f"seed{seed}"), "test")
        predictions.append(scored.predicted.double())
    error = np.asarray(sum(predictions) / seeds - scored.ratings.rating.double())
    scoring = time.perf_counter() - started
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "seconds": sum(run["seconds"] for run in runs) + scoring,
    }


def run_peer(name: str, split: Path, seed: int) -> dict[str, float] | None:
    python = ROOT / PEERS[name][1] / "bin" / "python"
    if not python.exists():
        return None
    out, seconds = timed(
        [str(python), str(ROOT / "benchmarks" / "peers.py"), name, str(split), str(seed)], {**os.environ}
    )
    return {**json.loads(out.strip().splitlines()[-1]), "seconds": seconds}


def summary(label: str, runs: list[dict[str, float]]) -> str:
    rmse = [run["rmse"] for run in runs]
    spread = f"± {statistics.stdev(rmse):.4f}" if len(rmse) > 1 else ""
    mae = statistics.mean(run["mae"] for run in runs)
    seconds = statistics.mean(run["seconds"] for run in runs)
    return f"| {label} | {len(runs)} | {statistics.mean(rmse):.4f} {spread} | {mae:.4f} | {seconds:.0f} s |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, default=3, help="dlrm and myFM runs, seeds 0..N-1 (default 3)")
    parser.add_argument("--peers", default="myfm-mf,myfm-bags,svdpp", help="peer models to run, comma-separated")
    parser.add_argument(
        "--dlrm-options",
        default="",
        help="more options for dlrm train, e.g. '--retrieval none' (the ranking stage trains after the rating "
        "model and leaves its predictions unchanged; it only adds time)",
    )
    args = parser.parse_args()
    data = args.data.resolve()
    if not (data / "ratings.dat").is_file():
        print(f"no MovieLens ratings in {data}", file=sys.stderr)
        return 2
    peers = [name.strip() for name in args.peers.split(",") if name.strip()]
    unknown = [name for name in peers if name not in PEERS]
    if unknown:
        print(f"unknown peer {unknown[0]!r}; choose from {', '.join(PEERS)}", file=sys.stderr)
        return 2
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as folder:
        store, split = Path(folder) / "store", agreed_split(data, Path(folder))
        env = {**os.environ, "DLRM_CHECKPOINT_DIR": str(store), "DLRM_CACHE_DIR": str(Path(folder) / "cache")}
        dlrm_runs = []
        for seed in range(args.seeds):
            dlrm_runs.append(run_dlrm(data, seed, store, env, args.dlrm_options.split()))
            print(f"dlrm seed {seed}: {json.dumps(dlrm_runs[-1])}", file=sys.stderr)
        os.environ["DLRM_CACHE_DIR"] = env["DLRM_CACHE_DIR"]  # the averaging below scores in this process
        average = averaged(store, args.seeds, dlrm_runs) if args.seeds > 1 else None
        for name in peers:
            label, environment, seeded = PEERS[name]
            runs = []
            for seed in range(args.seeds if seeded else 1):
                run = run_peer(name, split, seed)
                if run is None:
                    notes.append(f"{label}: skipped, {environment} is missing (make peers)")
                    break
                runs.append(run)
                print(f"{name} seed {seed}: {json.dumps(run)}", file=sys.stderr)
            if runs:
                rows.append((label, runs))
    count = dlrm_runs[0]["count"]
    print(f"MovieLens 1M subset, agreed 90/10 split (seed 0): {count:,} test ratings; mean over seeds 0..N-1")
    print("| model | seeds | test RMSE (± sd) | test MAE | wall time |")
    print("|---|---|---|---|---|")
    for label, runs in rows:
        print(summary(label, runs))
    print(summary("**dlrm** (`dlrm train --data movielens:DIR`)", dlrm_runs))
    if average is not None:
        label = f"dlrm, the {args.seeds} seeds' predictions averaged (wall time: all {args.seeds} runs)"
        print(f"| {label} | | {average['rmse']:.4f} | {average['mae']:.4f} | {average['seconds']:.0f} s |")
    val = statistics.mean(run["val_rmse"] for run in dlrm_runs)
    epochs = ", ".join(f"{run['epochs']} (best {run['best_epoch']})" for run in dlrm_runs)
    print(f"dlrm: validation RMSE {val:.4f} (mean); epochs run per seed: {epochs}")
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
