"""The ranking benchmark's peer, run in its own environment (see ``ranking_ceiling.py``).

    PYTHON ranking_peers.py ials ROWS.npz OUT.npz FACTORS REGULARISATION

Fits implicit's alternating least squares (Hu, Koren & Volinsky, ICDM 2008; every unobserved pair a 0 of
weight 1, every observed pair a 1 of weight 1) on the (user, item) rows of ROWS.npz and writes the user
and item factors to OUT.npz (``users``, ``items``; row r is the model's row r), from which the benchmark
scores each user's items as dot products. Only numpy, scipy and implicit are imported.
"""

from __future__ import annotations

import sys

import numpy as np

ITERATIONS = 15


def ials(rows: dict[str, np.ndarray], factors: int, regularisation: float) -> tuple[np.ndarray, np.ndarray]:
    import scipy.sparse as sps
    from implicit.cpu.als import AlternatingLeastSquares

    shape = (int(rows["n_users"]), int(rows["n_items"]))
    seen = sps.csr_matrix((np.ones(len(rows["user"]), dtype=np.float32), (rows["user"], rows["item"])), shape)
    seen.data[:] = 1.0  # a repeated pair counts once
    model = AlternatingLeastSquares(
        factors=factors, regularization=regularisation, iterations=ITERATIONS, random_state=0
    )
    model.fit(seen, show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def main(argv: list[str]) -> int:
    if len(argv) != 6 or argv[1] != "ials":
        print(__doc__, file=sys.stderr)
        return 2
    with np.load(argv[2]) as stored:
        rows = {key: stored[key] for key in stored.files}
    users, items = ials(rows, int(argv[4]), float(argv[5]))
    np.savez(argv[3], users=users, items=items)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
