"""The large-data targets, each figure measured in one run (2 cores, 24 GiB).

    make peers                                               # once: myFM in .venv-myfm
    .venv/bin/python benchmarks/ml25m_shape.py /tmp/ml25m    # once: ratings of ML-25M's shape
    .venv/bin/python benchmarks/scale_targets.py /tmp/ml25m [--subset DIR] [--seeds 3] [--skip-subset]
        [--skip-large] [--before REV]

1. The ML-1M subset, rating model (``--retrieval none``), seeds 0..N-1 on the agreed split: the exact bags
   against the cached bags (``--heavy-bags 0 --bag-refresh 10``), and myFM with the same bags. Test RMSE, the
   training time (``dlrm train``'s "trained in"), and each process's wall time. ``--before REV``: also dlrm as
   of that git revision (exported with ``git archive`` and run from there with this environment, its own store),
   with its exact bags, in turn with the others: the speed-up against the code as it was.
2. The ML-25M-shaped ratings: ``dlrm train --epochs 1 --batch-size 4096 --heavy-bags 0 --bag-refresh 30`` with
   every other default (so the ranking stage too): the epoch's time and samples/s, the ranking stage's time and
   the process's peak memory; and, for comparison, the same epoch without the bags (one stage).
3. ``dlrm recommend --all-users`` with the checkpoint of 2, as it runs by default: wall time and peak memory.
4. ``dlrm evaluate --k 10 --sample-users 5000`` with that checkpoint: wall time, peak memory and each model's
   ranking time (the whole catalogue for 5,000 of the test users).

Every command runs in its own process, one after another; peak memory is that process's resident peak.
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

from movielens_accuracy import DEFAULT_DATA, agreed_split, run_peer

CACHED_SUBSET = ["--heavy-bags", "0", "--bag-refresh", "10"]
LARGE = ["--epochs", "1", "--batch-size", "4096", "--heavy-bags", "0", "--bag-refresh", "30"]
RANKED_USERS = 5000  # evaluate --k --sample-users: the whole catalogue ranked for this many test users


def run(command: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[str, float, float]:
    """Stdout, wall seconds and peak resident GiB of one process."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True, cwd=cwd)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{err.read()[-2000:]}")
        return out.read(), seconds, usage.ru_maxrss / 2**20


def dlrm(*args: str) -> list[str]:
    return [sys.executable, "-m", "dlrm_cli", *args]


def meta(store: Path, name: str) -> dict:
    return json.loads((store / name / "meta.json").read_text())


def exported(revision: str, folder: Path) -> Path:
    """The repository's files at a git revision, in ``folder``; ``python -m dlrm_cli`` run there imports them."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", revision], capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"--before {revision}: {archive.stderr.decode().strip()}")
    folder.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def subset_runs(
    data: Path, seeds: int, folder: Path, env: dict[str, str], before: str | None = None
) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {"exact": [], "cached": [], "myfm": [], "before": []}
    labels: list[tuple[str, list[str], Path | None, dict[str, str]]] = [
        ("exact", [], None, env),
        ("cached", CACHED_SUBSET, None, env),
    ]
    if before is not None:  # its own store: it may not read this code's checkpoints, nor this code its own
        earlier = {**env, "DLRM_CHECKPOINT_DIR": f"{folder}/before-store"}
        labels.insert(0, ("before", [], exported(before, folder / "before"), earlier))
    for seed in range(seeds):
        for label, options, cwd, label_env in labels:
            name = f"{label}{seed}"
            train = dlrm("train", "--data", f"movielens:{data}", "--split-seed", "0", "--seed", str(seed))
            _, wall, _ = run([*train, "--name", name, "--retrieval", "none", *options], label_env, cwd)
            report = json.loads(run(dlrm("evaluate", "-c", name, "--json"), label_env, cwd)[0])
            store = Path(label_env["DLRM_CHECKPOINT_DIR"])
            found = {"rmse": report["model"]["rmse"], "train": meta(store, name)["seconds"], "wall": wall}
            runs[label].append(found)
            print(f"subset {label} seed {seed}: {json.dumps(found)}", file=sys.stderr, flush=True)
        split = agreed_split(data, folder)
        peer = run_peer("myfm-bags", split, seed)
        if peer is not None:
            runs["myfm"].append({"rmse": peer["rmse"], "train": peer["fit_seconds"], "wall": peer["seconds"]})
            print(f"subset myfm-bags seed {seed}: {json.dumps(runs['myfm'][-1])}", file=sys.stderr, flush=True)
    return runs


def large_runs(data: Path, env: dict[str, str]) -> dict[str, dict[str, float]]:
    store, found = Path(env["DLRM_CHECKPOINT_DIR"]), {}
    train = dlrm("train", "--data", f"movielens:{data}")
    for label, options in (("cached", ["--name", "large", *LARGE]), ("nobags", ["--name", "nobags", *LARGE[:4]])):
        if label == "nobags":
            options += ["--no-bags", "--retrieval", "none"]
        _, wall, peak = run([*train, *options], env)
        record = meta(store, "large" if label == "cached" else "nobags")
        epoch = record["history"][0]
        stages = record.get("stages") or {}
        found[label] = {
            "wall": wall,
            "peak": peak,
            "epoch": epoch["seconds"],
            "rate": epoch["samples_per_s"],
            "val_rmse": epoch["val_rmse"],
            "stages": stages.get("seconds", 0.0),
        }
        print(f"ML-25M shape, {label}: {json.dumps(found[label])}", file=sys.stderr, flush=True)
    output = Path(env["DLRM_CHECKPOINT_DIR"]).parent / "recs.csv"
    _, wall, peak = run(dlrm("recommend", "-c", "large", "--all-users", "--output", str(output)), env)
    found["recommend"] = {"wall": wall, "peak": peak}
    evaluate = dlrm("evaluate", "-c", "large", "--k", "10", "--sample-users", str(RANKED_USERS), "--json")
    report, wall, peak = run(evaluate, env)
    ranking = json.loads(report)["ranking"]
    found["evaluate_k"] = {"wall": wall, "peak": peak, "of_users": ranking["of_users"], **ranking["seconds"]}
    print(f"ML-25M shape, evaluate --k: {json.dumps(found['evaluate_k'])}", file=sys.stderr, flush=True)
    return found


BOOKKEEPING = ("wall", "peak", "of_users")


def mean(runs: list[dict[str, float]], key: str) -> float:
    return statistics.mean(run[key] for run in runs)


def spread(runs: list[dict[str, float]]) -> str:
    values = [run["rmse"] for run in runs]
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def print_subset(runs: dict[str, list[dict[str, float]]], before: str | None) -> None:
    exact, cached, peer, earlier = runs["exact"], runs["cached"], runs["myfm"], runs["before"]
    print(f"ML-1M subset, rating model, {len(exact)} seeds (agreed split; mean per seed)")
    print("| run | test RMSE | training | process wall time |")
    print("|---|---|---|---|")
    rows = [(f"dlrm as of {before}, exact bags", earlier)] if earlier else []
    rows += [("dlrm, exact bags", exact), ("dlrm --heavy-bags 0 --bag-refresh 10", cached)]
    rows += [("myFM with the same bags (fit)", peer)] if peer else []
    for label, found in rows:
        print(f"| {label} | {spread(found)} | {mean(found, 'train'):.1f} s | {mean(found, 'wall'):.1f} s |")
    change = mean(cached, "rmse") - mean(exact, "rmse")
    if earlier:
        print(
            f"target: training >= 2x faster than dlrm as of {before}: "
            f"{mean(earlier, 'train') / mean(cached, 'train'):.2f}x (process wall time "
            f"{mean(earlier, 'wall') / mean(cached, 'wall'):.2f}x; per seed "
            + ", ".join(f"{old['train'] / new['train']:.2f}" for old, new in zip(earlier, cached, strict=True))
            + f"); test RMSE {mean(cached, 'rmse') - mean(earlier, 'rmse'):+.4f}"
        )
    print(
        f"training against this code's exact bags: {mean(exact, 'train') / mean(cached, 'train'):.2f}x "
        f"(process wall time {mean(exact, 'wall') / mean(cached, 'wall'):.2f}x; per seed "
        + ", ".join(f"{old['train'] / new['train']:.2f}" for old, new in zip(exact, cached, strict=True))
        + ")"
    )
    print(f"target: test RMSE within 0.002 of the exact bags: {change:+.4f}")
    if peer:
        ours, theirs = mean(cached, "wall"), mean(peer, "wall")
        print(f"target: less wall time than myFM with bags: {ours:.1f} s against {theirs:.1f} s")


def print_large(found: dict[str, dict[str, float]]) -> None:
    cached, nobags, recs = found["cached"], found["nobags"], found["recommend"]
    print("ML-25M-shaped ratings (21,375,082 training rows)")
    print(
        f"target: an epoch with the bags <= 5 min: {cached['epoch'] / 60:.1f} min, {cached['rate']:,.0f} samples/s "
        f"(validation RMSE {cached['val_rmse']:.4f}; without bags {nobags['epoch'] / 60:.1f} min, "
        f"{nobags['rate']:,.0f} samples/s, validation RMSE {nobags['val_rmse']:.4f})"
    )
    print(f"target: peak memory <= 12 GiB: {cached['peak']:.1f} GiB (the whole train process)")
    print(f"the whole train process: {cached['wall'] / 60:.1f} min, its ranking stage {cached['stages'] / 60:.1f} min")
    print(f"target: recommend --all-users <= 10 min: {recs['wall'] / 60:.1f} min, peak {recs['peak']:.1f} GiB")
    ranked = found["evaluate_k"]
    each = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in ranked.items() if name not in BOOKKEEPING)
    print(
        f"evaluate --k 10 --sample-users {RANKED_USERS} (of {ranked['of_users']:,} test users, full catalogue): "
        f"{ranked['wall'] / 60:.1f} min, peak {ranked['peak']:.1f} GiB; ranking by {each}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("large", type=Path, help="ratings of ML-25M's shape (benchmarks/ml25m_shape.py)")
    parser.add_argument("--subset", type=Path, default=DEFAULT_DATA, help="the ML-1M subset")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-subset", action="store_true", help="only the ML-25M-shaped figures")
    parser.add_argument("--skip-large", action="store_true", help="only the subset's figures")
    parser.add_argument("--before", metavar="REV", help="also train the subset with dlrm as of this git revision")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "DLRM_CHECKPOINT_DIR": f"{folder}/store", "DLRM_CACHE_DIR": f"{folder}/cache"}
        subset = None
        if not args.skip_subset:
            subset = subset_runs(args.subset.resolve(), args.seeds, Path(folder), env, args.before)
        large = None if args.skip_large else large_runs(args.large.resolve(), env)
    if subset is not None:
        print_subset(subset, args.before)
    if large is not None:
        print_large(large)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
