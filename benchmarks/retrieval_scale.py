"""The retrieval stage at MovieLens-25M's sizes: fit time, memory and scoring time of each candidate generator.

    .venv/bin/python benchmarks/retrieval_scale.py [--users 162541] [--items 59047] [--rows 25000095]
                                                   [--ease-items 5000,10000]

The interactions are drawn at random with a long-tailed item popularity (item i drawn in proportion to
1 / (i + 10)), at ML-25M's numbers of users, items and rows. For PureSVD, the generator `dlrm train
--retrieval auto` picks above 20,000 items: the known-items table, the fit (time and the process's peak
memory), the fitted state that the checkpoint keeps, and the time to propose 100 candidates to 1,000 users.
For EASE, whose item x item matrix grows with the square of the items: the same at the smaller catalogues
`--ease-items` names, and the size its matrix would have at `--items`.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def draw(users: int, items: int, rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weights = 1.0 / (torch.arange(items, dtype=torch.float64) + 10.0)
    item = torch.multinomial(weights, rows, replacement=True, generator=generator)
    user = torch.randint(users, (rows,), generator=generator)
    return user, item


def measure(kind: str, users: int, items: int, rows: int) -> str:
    from dlrm_cli.retrieval.features import top_candidates
    from dlrm_cli.retrieval.generators import fit_generator, masked_scores
    from dlrm_cli.retrieval.history import History

    user, item = draw(users, items, rows)
    started = time.perf_counter()
    history = History.of_pairs(user, item, users, items)
    del user, item
    built = time.perf_counter() - started
    before = peak_mib()
    started = time.perf_counter()
    generator = fit_generator(history, kind)
    fitted = time.perf_counter() - started
    state = sum(value.numel() * value.element_size() for value in generator.state().values() if torch.is_tensor(value))
    known = history.items.numel() * history.items.element_size() + history.offsets.numel() * 8
    allowed = history.item_counts() > 0
    asked = torch.arange(1000)
    started = time.perf_counter()
    for start in range(0, len(asked), 250):
        chunk = asked[start : start + 250]
        scores = masked_scores(generator, history.matrix(chunk), allowed)
        top_candidates(scores, 100, history.item_counts(), history.counts()[chunk])
    proposed = time.perf_counter() - started
    return (
        f"| {generator.kind} | {users:,} | {items:,} | {len(history):,} | {built:.1f} s | {fitted:.1f} s "
        f"| {state / 2**20:,.0f} MiB | {known / 2**20:,.0f} MiB | {peak_mib():,.0f} MiB ({before:,.0f} before the fit) "
        f"| {proposed:.2f} s |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=162_541)
    parser.add_argument("--items", type=int, default=59_047)
    parser.add_argument("--rows", type=int, default=25_000_095)
    parser.add_argument("--ease-items", default="5000,10000", help="catalogue sizes to fit EASE at ('' for none)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(
        "| generator | users | items | known pairs | table built | fit | fitted state | known items kept "
        "| peak memory | 100 candidates for 1,000 users |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(measure("svd", args.users, args.items, args.rows), flush=True)
    for items in [int(text) for text in args.ease_items.split(",") if text]:
        rows = args.rows * items // args.items
        print(measure("ease", args.users * items // args.items, items, rows), flush=True)
    matrix = args.items**2 * 4 / 2**30
    print(
        f"EASE at {args.items:,} items: its weights alone would take {matrix:,.1f} GiB (and its fit inverts an "
        f"{args.items:,} x {args.items:,} matrix in double precision, {2 * matrix:,.1f} GiB more); "
        "`--retrieval auto` picks PureSVD above 20,000 items",
        file=sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
