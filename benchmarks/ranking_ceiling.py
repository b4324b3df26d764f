"""Ranking benchmark: dlrm beside the strongest classical rankers on evaluate --k's protocol, each over a grid, one run.

    make peers                                        # once: implicit (iALS) in .venv-implicit, among others
    .venv/bin/python benchmarks/ranking_ceiling.py [DATA_DIR] [--seeds 1] [--ranking-seeds 1]

The protocol is `dlrm evaluate --k 10`'s: full ranking of every item seen in training, minus the user's
known items, relevant = a held-out rating of 4 or more, NDCG@10 averaged over the users with one. Each
classical model is fitted over a small grid of its one or two settings: EASE's λ (Steck, WWW 2019), PureSVD's
rank (Cremonesi et al., RecSys 2010) and iALS's factors and L2 (implicit's ALS, in its own environment,
`benchmarks/ranking_peers.py`; skipped with a note when .venv-implicit is missing). For every setting it is
fitted twice: on the training rows, scored on the validation rows (all validation users), and on training and
validation rows, scored on the test rows. A model's row shows the setting validation picks, and beside it
the best test figure of its whole grid: what the model reaches even when tuned on the test rows themselves.

dlrm trains its default run for each seed (`dlrm train --data movielens:DIR`: the rating model, then the
two stages, EASE's candidates ordered by a DLRM ranker) and is scored on the same users as `evaluate --k`
scores it: on the validation rows with the generator refitted on the training rows. Then `--objective ranking`
alone (one model over the whole catalogue), whose training time the two stages are measured against. Nothing
is fitted on the test rows except where the table says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from movielens_accuracy import DEFAULT_DATA, ROOT, timed  # beside this script

IMPLICIT = ROOT / ".venv-implicit" / "bin" / "python"
EASE_GRID = (100, 200, 500, 1000, 2000, 4000)  # λ
SVD_GRID = (16, 24, 32, 50, 64, 128)  # rank
IALS_GRID = ((32, 3), (64, 20), (96, 20), (128, 30), (256, 30))  # (factors, L2)


def ndcg(task, scorer: Callable[[torch.Tensor], torch.Tensor]) -> float:
    from dlrm_cli.scoring.ranking import rank_metrics

    return float(rank_metrics(task, scorer, (10,))["@10"]["ndcg"])


def tasks(dataset) -> dict[str, object]:
    """The validation and test tasks, as `dlrm evaluate --k` builds them (every user with a relevant rating)."""
    from dlrm_cli.scoring.ranking import held_out_task

    return {split: held_out_task(dataset, split, 4.0) for split in ("validation", "test")}


def ials_scorer(task, factors: int, regularisation: float, folder: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    rows, out = folder / "rows.npz", folder / "factors.npz"
    np.savez(
        rows,
        user=task.known_users.numpy(),
        item=task.known_items.numpy(),
        n_users=task.n_users,
        n_items=task.n_items,
    )
    command = [str(IMPLICIT), str(ROOT / "benchmarks" / "ranking_peers.py"), "ials", str(rows), str(out)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}  # implicit parallelises itself
    timed([*command, str(factors), str(regularisation)], env)
    with np.load(out) as fitted:
        users, items = torch.from_numpy(fitted["users"]).float(), torch.from_numpy(fitted["items"]).float()
    return lambda chunk: users[chunk] @ items.T


def show(setting) -> str:
    return ", ".join(map(str, setting)) if isinstance(setting, tuple) else str(setting)


def grid_rows(label: str, settings, fit, splits) -> tuple[str, float]:
    """Each setting scored on validation and on test; (the table row, the seconds it took)."""
    started = time.perf_counter()
    scores = [(setting, ndcg(splits["validation"], fit(splits["validation"], setting)),
               ndcg(splits["test"], fit(splits["test"], setting))) for setting in settings]  # fmt: skip
    for setting, validation, test in scores:
        print(f"  {label} {show(setting)}: validation {validation:.4f}, test {test:.4f}", file=sys.stderr, flush=True)
    chosen = max(scores, key=lambda score: score[1])
    best = max(scores, key=lambda score: score[2])
    row = f"| {label} | {show(chosen[0])} | {chosen[1]:.4f} | {chosen[2]:.4f} | {best[2]:.4f} ({show(best[0])}) |"
    return row, time.perf_counter() - started


def dlrm_rows(data: Path, seeds: int, ranking_seeds: int, splits) -> list[str]:
    """dlrm's default run (two stages) for each seed, and ``--objective ranking`` alone (one stage, the whole
    catalogue) for the first ``ranking_seeds`` seeds, each timed as a user would run it."""
    from dlrm_cli.data.sources import load_dataset
    from dlrm_cli.scoring.evaluation import split_stages
    from dlrm_cli.scoring.metrics import candidate_scorer
    from dlrm_cli.store.loading import open_model

    rows, scorers = [], {"validation": [], "test": []}
    dataset = load_dataset(_source(data))
    with tempfile.TemporaryDirectory() as store:
        for seed in range(seeds):
            seconds = _train(data, store, f"two{seed}", seed)
            loaded = open_model(store, f"two{seed}")
            figures = []
            for split in ("validation", "test"):
                stages = split_stages(loaded, dataset, split, None)
                scorers[split].append(stages.full_scores)
                figures.append(ndcg(splits[split], stages.full_scores))
            label = f"dlrm default: two stages, `--seed {seed}`"
            rows.append(f"| {label} | preset | {figures[0]:.4f} | {figures[1]:.4f} | | {seconds:.0f} s |")
        if seeds > 1:
            mean = [sum(ndcg(splits[split], s) for s in scorers[split]) / seeds for split in ("validation", "test")]
            rows.append(f"| dlrm default, mean of {seeds} seeds | preset | {mean[0]:.4f} | {mean[1]:.4f} | | |")
        for seed in range(ranking_seeds):
            seconds = _train(data, store, f"rank{seed}", seed, "--objective", "ranking", "--retrieval", "none")
            loaded = open_model(store, f"rank{seed}")
            figures = [ndcg(splits[split], candidate_scorer(loaded.model, loaded.catalog, splits[split], loaded.device))
                       for split in ("validation", "test")]  # fmt: skip
            label = f"dlrm `--objective ranking --retrieval none --seed {seed}`"
            rows.append(f"| {label} | preset | {figures[0]:.4f} | {figures[1]:.4f} | | {seconds:.0f} s |")
    return rows


def _source(data: Path):
    from dlrm_cli.data.sources import parse_data_option

    return parse_data_option(f"movielens:{data}")


def _train(data: Path, store: str, name: str, seed: int, *extra: str) -> float:
    command = [sys.executable, "-m", "dlrm_cli", "train", "--data", f"movielens:{data}", "--store", store,
               "--seed", str(seed), "--split-seed", "0", "--name", name, *extra]  # fmt: skip
    return timed(command, {**os.environ})[1]


def _averaged(scorers: list) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda users: sum(scorer(users) for scorer in scorers) / len(scorers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, default=1, help="dlrm default runs, seeds 0..N-1 (default 1)")
    parser.add_argument("--ranking-seeds", type=int, default=1, help="--objective ranking runs (default 1)")
    args = parser.parse_args()
    data = args.data.resolve()
    if not (data / "ratings.dat").is_file():
        print(f"no MovieLens ratings.dat in {data}", file=sys.stderr)
        return 2
    from dlrm_cli.data.sources import load_dataset
    from dlrm_cli.scoring.ranking import ease, pure_svd

    splits = tasks(load_dataset(_source(data)))
    columns = "setting chosen on validation | validation NDCG@10 | test NDCG@10 | best test over the grid | time"
    print(f"| model | {columns} |")
    print("|---|---|---|---|---|---|")
    row, seconds = grid_rows("EASE (λ)", EASE_GRID, lambda task, value: ease(task, value), splits)
    print(f"{row} {seconds:.0f} s |", flush=True)
    row, seconds = grid_rows("PureSVD (rank)", SVD_GRID, lambda task, rank: pure_svd(task, rank), splits)
    print(f"{row} {seconds:.0f} s |", flush=True)
    if IMPLICIT.exists():
        with tempfile.TemporaryDirectory() as folder:
            fit = lambda task, setting: ials_scorer(task, *setting, Path(folder))  # noqa: E731
            row, seconds = grid_rows("iALS (factors, L2)", IALS_GRID, fit, splits)
        print(f"{row} {seconds:.0f} s |", flush=True)
    else:
        print("iALS skipped: .venv-implicit is missing (make peers)", file=sys.stderr)
    for row in dlrm_rows(data, args.seeds, args.ranking_seeds, splits):
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
