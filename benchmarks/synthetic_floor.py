"""How close to its noise floor can any model get on the built-in data? Bayes-optimal estimators against
dlrm and myFM, on the validation rows of the default `dlrm train`.

    .venv/bin/python benchmarks/synthetic_floor.py [--sweeps 300] [--no-dlrm] [--no-myfm]
        [--dlrm-seeds 1] [--dlrm-options '--ensemble 1 ...']

The built-in data is generated (``dlrm_cli.data.synthetic``) as rating = clip(mu + noise, 0, 5), with mu the
sum of a global mean, user, item and category biases, a dot product of user and item factors (an item's
factors include its category's offset), effects of the observable features and the effect of each rating's
context (its channel and hour). Its noise floor is the RMSE of E[clip(mu + noise)], the prediction of a model
that knows every hidden parameter and reads each rating's context. Beside it, the floor of a model that knows
every hidden parameter but not the context: E[clip(mu + noise)] averaged over the contexts the generator draws.

No model knows them; it must estimate them from the training ratings. The best any estimator can do, in
expectation, is to average E[clip(mu + noise)] over the posterior of what it does not know. This script
samples that posterior exactly (Gibbs sampling; the ratings clipped at 0 or 5 are sampled as latent
uncensored values), for two estimators that are told more than any model is:

- told every item's parameters, the category effects, the feature and context effects, the priors and the
  noise, it estimates only each user's bias and factors;
- told the generator's form, the category effects, the feature and context effects, the priors and the
  noise, it estimates every user's and every item's bias and factors.

Beside them, in the same run: `dlrm train` with its defaults (its best validation RMSE, from the checkpoint;
with ``--dlrm-seeds N``, N models of seeds 0..N-1 on the same data, and their predictions averaged) and,
where `make peers` made .venv-myfm, myFM's Bayesian matrix factorisation with ids only, fitted on the training
rows and scored on the validation rows (it reads no context).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from movielens_accuracy import run_peer, timed  # beside this script

from dlrm_cli.config import SyntheticSpec
from dlrm_cli.data.synthetic import Draws, draw, expected_clipped


class Posterior:
    """Gibbs sampling of the hidden biases and factors given the clipped training ratings."""

    def __init__(self, draws: Draws, spec: SyntheticSpec, seed: int = 0) -> None:
        truth, splits = draws.truth, draws.splits(spec)
        self.spec, self.truth = spec, truth
        self.train, self.val = splits["train"], splits["validation"]
        self.rating = draws.rating[self.train]
        told = truth.shared_effect  # the global mean, category biases, feature and context effects
        self.told_train, self.told_val = told[self.train], told[self.val]
        self.rng = np.random.default_rng(seed)
        k = spec.factors
        # the generator's priors: biases N(0, 0.3^2); user factors N(0, 0.4^2); an item's factors N(its
        # category's offset, 0.3^2)
        self.user_precision = np.diag([1 / 0.09] + [1 / 0.16] * k)
        self.item_precision = np.diag([1 / 0.09] + [1 / 0.09] * k)
        self.item_prior_mean = np.concatenate([np.zeros((spec.items, 1)), truth.category_factors[truth.category]], 1)
        self.users = np.zeros((spec.users, k + 1))  # [bias, factors] per user: sampled from the prior mean
        self.items = self.item_prior_mean.copy()

    def told_items(self) -> None:
        truth = self.truth
        self.items = np.concatenate([truth.item_bias[:, None], truth.item_factors], 1)

    def _draw(self, owners, count, others, other_rows, residual, precision, prior_mean) -> np.ndarray:
        """One draw of [bias, factors] per owner from its Gaussian posterior given the other side."""
        features = np.concatenate([np.ones((len(owners), 1)), others[other_rows, 1:]], 1)
        target = residual - others[other_rows, 0]
        variance = self.spec.noise**2
        gram = np.zeros((count, *precision.shape))
        np.add.at(gram, owners, features[:, :, None] * features[:, None, :] / variance)
        gram += precision
        rhs = np.zeros((count, precision.shape[0]))
        np.add.at(rhs, owners, features * (target / variance)[:, None])
        rhs += prior_mean @ precision
        mean = np.linalg.solve(gram, rhs[..., None])[..., 0]
        noise = self.rng.standard_normal(mean.shape)
        cholesky = np.linalg.cholesky(gram)
        return mean + np.linalg.solve(np.transpose(cholesky, (0, 2, 1)), noise[..., None])[..., 0]

    def _mean(self, told: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """mu of the ``rows`` (of all ratings) under the current draw; ``told``: their shared effects."""
        users, items = self.truth.user[rows], self.truth.item[rows]
        own = np.einsum("nk,nk->n", self.users[users, 1:], self.items[items, 1:])
        return told + self.users[users, 0] + self.items[items, 0] + own

    def _uncensored(self) -> np.ndarray:
        """The training ratings, with each one clipped at 0 or 5 replaced by a draw of its unclipped value."""
        sigma = self.spec.noise
        mean = self._mean(self.told_train, self.train)
        values = self.rating.copy()
        for clipped, low, high in ((self.rating <= 0.0, -np.inf, 0.0), (self.rating >= 5.0, 5.0, np.inf)):
            centre = torch.from_numpy(mean[clipped])
            below = torch.special.ndtr((low - centre) / sigma)
            above = torch.special.ndtr((high - centre) / sigma)
            uniform = torch.from_numpy(self.rng.uniform(size=int(clipped.sum())))
            quantile = (below + uniform * (above - below)).clamp(1e-12, 1 - 1e-12)
            values[clipped] = (centre + sigma * torch.special.ndtri(quantile)).numpy()
        return values

    def predict(self, sweeps: int, estimate_items: bool) -> np.ndarray:
        """E[clip(mu + noise)] on the validation rows, averaged over the sweeps after the first third."""
        truth, spec = self.truth, self.spec
        users, items = truth.user[self.train], truth.item[self.train]
        total, samples = np.zeros(len(self.val)), 0
        for sweep in range(sweeps):
            residual = self._uncensored() - self.told_train
            prior = np.zeros((spec.users, spec.factors + 1))
            self.users = self._draw(users, spec.users, self.items, items, residual, self.user_precision, prior)
            if estimate_items:
                self.items = self._draw(
                    items, spec.items, self.users, users, residual, self.item_precision, self.item_prior_mean
                )
            if sweep >= sweeps // 3:
                total += expected_clipped(self._mean(self.told_val, self.val), spec.noise, 0.0, 5.0)
                samples += 1
        return total / samples


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


def run_dlrm(folder: Path, seed: int = 0, options: tuple[str, ...] = ()) -> dict[str, float]:
    """``dlrm train`` with its defaults (and ``options``) on the built-in data of seed 0, its model seeded with
    ``seed``."""
    store = folder / "store"
    env = {**os.environ, "DLRM_CHECKPOINT_DIR": str(store)}
    name = f"seed{seed}"
    command = [sys.executable, "-m", "dlrm_cli", "train", "--name", name, "--seed", str(seed), "--split-seed", "0"]
    _, seconds = timed([*command, *options], env)
    meta = json.loads((store / name / "meta.json").read_text())
    validation = meta["metrics"]["validation"]["rmse"]
    return {"rmse": validation, "last": meta["history"][-1]["val_rmse"], "seconds": seconds, "name": name}


def dlrm_predictions(folder: Path, names: list[str], own_context: bool = True) -> np.ndarray:
    """The validation predictions of the checkpoints ``names``, averaged: each rating in its own context, or
    (``own_context`` False) every rating at the context's defaults."""
    from dlrm_cli import load
    from dlrm_cli.data.synthetic import generate
    from dlrm_cli.scoring.metrics import score

    validation = generate(SyntheticSpec()).validation
    rows = validation.context if own_context else None
    total = np.zeros(len(validation.rating))
    for name in names:
        loaded = load(name, store=folder / "store").loaded
        total += score(
            loaded.model, loaded.catalog, validation.user, validation.item, loaded.device, context=rows
        ).numpy()
    return total / len(names)


def run_myfm(draws: Draws, spec: SyntheticSpec, folder: Path) -> dict[str, float] | None:
    """myFM's Bayesian MF through the accuracy benchmark's peer runner, which scores its split's "test" rows:
    here the validation rows."""
    truth, splits = draws.truth, draws.splits(spec)
    columns = {"user": truth.user, "item": truth.item, "rating": draws.rating}
    path = folder / "split.npz"
    parts = (("train", splits["train"]), ("test", splits["validation"]))
    np.savez(path, **{f"{part}_{name}": values[rows] for part, rows in parts for name, values in columns.items()})
    return run_peer("myfm-mf", path, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=300, help="Gibbs sweeps per estimator (default 300)")
    parser.add_argument("--no-dlrm", action="store_true", help="skip the dlrm training run")
    parser.add_argument("--no-myfm", action="store_true", help="skip the myFM peer")
    parser.add_argument("--dlrm-seeds", type=int, default=1, help="dlrm models (seeds 0..N-1) to train and average")
    parser.add_argument("--dlrm-options", default="", help="more options for dlrm train, e.g. '--ensemble 1'")
    args = parser.parse_args()
    spec = SyntheticSpec()
    draws = draw(spec)
    validation = draws.splits(spec)["validation"]
    actual = draws.rating[validation]
    floor = rmse(expected_clipped(draws.truth.mean[validation], spec.noise, 0, 5), actual)
    blind = rmse(draws.truth.expected_without_context(spec.noise)[validation], actual)
    rows = []
    for label, estimate_items in (
        ("Bayes-optimal, told every item's parameters (estimates the users')", False),
        ("Bayes-optimal, told the generator's form (estimates every user's and item's)", True),
    ):
        started = time.perf_counter()
        posterior = Posterior(draws, spec)
        if not estimate_items:
            posterior.told_items()
        predicted = posterior.predict(args.sweeps, estimate_items)
        rows.append((label, rmse(predicted, actual), time.perf_counter() - started))
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        peer = None if args.no_myfm else run_myfm(draws, spec, folder)
        if peer is not None:
            rows.append(("myFM Bayesian MF, ids (no context), rank 10, 200 iterations", peer["rmse"], peer["seconds"]))
        options = tuple(args.dlrm_options.split())
        runs = [] if args.no_dlrm else [run_dlrm(folder, seed, options) for seed in range(args.dlrm_seeds)]
        command = " ".join(["dlrm train", *options])
        for run in runs:
            rows.append(
                (f"**dlrm** (`{command}`, its best epoch), model seed {run['name'][4:]}", run["rmse"], run["seconds"])
            )
        if len(runs) > 1:
            averaged = rmse(dlrm_predictions(folder, [run["name"] for run in runs]), actual)
            rows.append(
                (f"dlrm, the {len(runs)} runs' predictions averaged", averaged, sum(r["seconds"] for r in runs))
            )
        if runs:
            blind_dlrm = rmse(dlrm_predictions(folder, [runs[0]["name"]], own_context=False), actual)
            rows.append(("dlrm, model seed 0, every rating scored at the default context", blind_dlrm, None))
        dlrm = runs[0] if runs else None
    print(f"Built-in data ({spec.ratings:,} ratings), the {len(actual):,} validation rows of `dlrm train`")
    print("| model | validation RMSE | above the noise floor | wall time |")
    print("|---|---|---|---|")
    print(f"| noise floor: E[clip(mu + noise)], every hidden parameter known | {floor:.4f} | | |")
    print(f"| every hidden parameter known but not the context | {blind:.4f} | {blind / floor - 1:+.1%} | |")
    for label, value, seconds in rows:
        took = "" if seconds is None else f"{seconds:.0f} s"
        print(f"| {label} | {value:.4f} | {value / floor - 1:+.1%} | {took} |")
    if dlrm is not None:
        print(f"dlrm's last epoch: {dlrm['last']:.4f} ({dlrm['last'] / dlrm['rmse'] - 1:+.1%} from its best)")
        bayes = rows[1][1]  # told the generator's form
        trained = [value for label, value, seconds in rows[2:] if "dlrm" in label and seconds is not None]
        above = ", ".join(f"{value / bayes - 1:+.1%}" for value in trained)
        print(f"dlrm above the Bayes-optimal estimator told the generator's form ({bayes:.4f}): {above}")
    if not args.no_myfm and peer is None:
        print("myFM: skipped, .venv-myfm is missing (make peers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
