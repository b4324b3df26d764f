"""The accuracy benchmark's peer models, run in their own environments (see ``movielens_accuracy.py``).

    PYTHON peers.py MODEL SPLIT.npz SEED

MODEL is ``myfm-mf`` (Bayesian matrix factorisation, ids only), ``myfm-bags`` (the same with implicit
bags: the items a user rated and the users who rated an item, weights 1/sqrt(n), from training rows only)
or ``svdpp`` (scikit-surprise's SVD++, default settings). The split file holds the training and test rows;
the model is fitted on the training rows, scored on the test rows, and one JSON line is printed:
``{"model", "seed", "rmse", "mae", "fit_seconds"}``. Only numpy and the peer's own package are imported.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

RANK = 10  # myFM: the rank and Gibbs iterations of the reference runs (myFM's own ML examples)
ITERATIONS = 200
BURN_IN = 5


def load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as split:
        return {key: split[key] for key in split.files}


def myfm_predictions(split: dict[str, np.ndarray], seed: int, bags: bool) -> np.ndarray:
    import myfm
    import scipy.sparse as sps
    from myfm import RelationBlock

    users, user_index = np.unique(np.concatenate([split["train_user"], split["test_user"]]), return_inverse=True)
    items, item_index = np.unique(np.concatenate([split["train_item"], split["test_item"]]), return_inverse=True)
    n_train = len(split["train_user"])
    train_users, train_items = user_index[:n_train], item_index[:n_train]

    def block(count: int, owners: np.ndarray, members: np.ndarray, member_count: int) -> sps.csr_matrix:
        """One row per entity: its one-hot id, then (with bags) its bag's members weighted 1/sqrt(n)."""
        identity = sps.identity(count, format="csr")
        if not bags:
            return identity
        ones = np.ones(len(owners))
        implicit = sps.csr_matrix((ones, (owners, members)), shape=(count, member_count))
        implicit.data[:] = 1.0  # a repeated rating counts once
        sizes = np.asarray(implicit.sum(axis=1)).ravel()
        implicit = sps.diags(1 / np.sqrt(np.maximum(sizes, 1))) @ implicit
        return sps.hstack([identity, implicit], format="csr")

    user_block = block(len(users), train_users, train_items, len(items))
    item_block = block(len(items), train_items, train_users, len(users))

    def relations(rows: slice) -> list:
        return [RelationBlock(user_index[rows], user_block), RelationBlock(item_index[rows], item_block)]

    train_rows, test_rows = slice(0, n_train), slice(n_train, None)
    model = myfm.MyFMRegressor(rank=RANK, random_seed=seed)
    empty_train = sps.csr_matrix((n_train, 0))
    model.fit(
        empty_train,
        split["train_rating"].astype(np.float64),
        X_rel=relations(train_rows),
        n_iter=ITERATIONS,
        n_kept_samples=ITERATIONS - BURN_IN,
    )
    empty_test = sps.csr_matrix((len(split["test_user"]), 0))
    return model.predict(empty_test, X_rel=relations(test_rows))


def svdpp_predictions(split: dict[str, np.ndarray], seed: int) -> np.ndarray:
    import pandas as pd
    from surprise import Dataset, Reader, SVDpp

    frame = pd.DataFrame({"user": split["train_user"], "item": split["train_item"], "rating": split["train_rating"]})
    low, high = float(split["train_rating"].min()), float(split["train_rating"].max())
    trainset = Dataset.load_from_df(frame, Reader(rating_scale=(low, high))).build_full_trainset()
    model = SVDpp(random_state=seed, cache_ratings=True)
    model.fit(trainset)
    pairs = zip(split["test_user"].tolist(), split["test_item"].tolist(), strict=True)
    return np.array([model.predict(user, item).est for user, item in pairs])


def main() -> int:
    name, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    split = load(path)
    started = time.perf_counter()
    if name in ("myfm-mf", "myfm-bags"):
        predicted = myfm_predictions(split, seed, bags=name == "myfm-bags")
    elif name == "svdpp":
        predicted = svdpp_predictions(split, seed)
    else:
        print(f"unknown peer model {name!r}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    error = predicted - split["test_rating"]
    report = {
        "model": name,
        "seed": seed,
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "fit_seconds": seconds,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
