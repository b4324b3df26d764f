"""Built-in data: synthetic ratings that a model can learn, with a known noise floor.

Each user and item has hidden biases and latent factors, and observable dense features that move the
rating (popular items score higher, price-sensitive users mark expensive items down, ...). A rating is
``clip(mu + noise, 0, 5)`` with Gaussian noise of a known size, so the best possible prediction of each
rating, E[clip(mu + noise)], is known exactly, and with it the RMSE a perfect model would get.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from dlrm_cli.data.catalog import Catalog, Dataset, EntityTable, Ratings

USER_DENSE = [
    "user_age",
    "tenure_days",
    "sessions_per_week",
    "avg_time_on_page",
    "avg_clicks_per_session",
    "purchases_last_year",
    "discount_usage_rate",
]
ITEM_DENSE = ["price", "popularity", "avg_review_length", "days_since_release", "discount_pct", "stock_level"]
CATEGORY_NAMES = [
    "books", "electronics", "garden", "toys", "kitchen", "music", "films", "sports", "fashion", "beauty",
    "games", "tools", "office", "pets", "baby", "health", "travel", "food", "art", "auto",
]  # fmt: skip


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and seed of the built-in data set. The defaults train in under a minute on 2 CPU cores."""

    users: int = 2000
    items: int = 1000
    categories: int = 20
    ratings: int = 200_000
    noise: float = 0.5
    factors: int = 8
    seed: int = 0
    validation_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("users", "items", "categories", "ratings", "factors"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic {name} must be >= 1, got {getattr(self, name)}")
        if self.noise < 0:
            raise ValueError(f"synthetic noise must be >= 0, got {self.noise}")
        if self.ratings < 10:
            raise ValueError(f"synthetic ratings must be >= 10 to make three splits, got {self.ratings}")
        need = 96 * self.ratings + (8 * self.factors + 128) * (self.users + self.items)
        if need > memory_bytes() // 2:
            raise ValueError(
                f"synthetic data of {self.users:,} users, {self.items:,} items and {self.ratings:,} ratings "
                f"needs about {need / 2**30:.1f} GiB, more than half of this machine's memory"
            )


def memory_bytes() -> int:
    """Physical memory of this machine."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _standardise(values: np.ndarray) -> np.ndarray:
    return (values - values.mean(axis=0)) / (values.std(axis=0) + 1e-8)


def expected_clipped(mu: np.ndarray, sigma: float, low: float, high: float) -> np.ndarray:
    """E[clip(X, low, high)] for X ~ N(mu, sigma^2): the prediction that minimises the expected squared error."""
    if sigma == 0:
        return np.clip(mu, low, high)
    alpha = (low - mu) / sigma
    beta = (high - mu) / sigma
    cdf = _normal_cdf
    pdf = np.exp(-0.5 * alpha**2) / math.sqrt(2 * math.pi), np.exp(-0.5 * beta**2) / math.sqrt(2 * math.pi)
    inside = cdf(beta) - cdf(alpha)
    return low * cdf(alpha) + high * (1 - cdf(beta)) + mu * inside + sigma * (pdf[0] - pdf[1])


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + torch.special.erf(torch.from_numpy(x / math.sqrt(2))).numpy())


def generate(spec: SyntheticSpec) -> Dataset:
    """Generate the data set for ``spec``; the same spec always gives the same data."""
    rng = np.random.default_rng(spec.seed)
    n_users, n_items, k = spec.users, spec.items, spec.factors

    # Observable user features.
    age = rng.uniform(18, 70, n_users)
    tenure = rng.exponential(400, n_users)
    sessions = rng.gamma(2.0, 2.0, n_users)
    time_on_page = rng.lognormal(3.5, 0.6, n_users)
    clicks = rng.poisson(6, n_users).astype(float)
    purchases = rng.poisson(3 + sessions).astype(float)
    discount_usage = rng.beta(2, 3, n_users)
    user_raw = np.stack([age, tenure, sessions, time_on_page, clicks, purchases, discount_usage], axis=1)

    # Observable item features.
    category = rng.integers(0, spec.categories, n_items)
    price = rng.lognormal(3.0, 0.8, n_items)
    popularity = rng.normal(0, 1, n_items)
    review_length = rng.lognormal(4.5, 0.5, n_items)
    days_since_release = rng.uniform(0, 2000, n_items)
    discount_pct = rng.uniform(0, 40, n_items)
    stock = rng.poisson(50, n_items).astype(float)
    item_raw = np.stack([price, popularity, review_length, days_since_release, discount_pct, stock], axis=1)

    # Hidden structure: biases and latent tastes, per user, item and category.
    user_bias = rng.normal(0, 0.3, n_users)
    item_bias = rng.normal(0, 0.3, n_items)
    category_bias = rng.normal(0, 0.25, spec.categories)
    user_factors = rng.normal(0, 0.4, (n_users, k))
    item_factors = rng.normal(0, 0.3, (n_items, k)) + rng.normal(0, 0.3, (spec.categories, k))[category]

    # Who rates what: active users and popular items more often.
    user_weight = rng.pareto(2.0, n_users) + 0.5
    item_weight = np.exp(0.8 * popularity)
    user = rng.choice(n_users, spec.ratings, p=user_weight / user_weight.sum())
    item = rng.choice(n_items, spec.ratings, p=item_weight / item_weight.sum())

    u, i = _standardise(user_raw), _standardise(item_raw)
    mu = (
        3.2
        + user_bias[user]
        + item_bias[item]
        + category_bias[category[item]]
        + np.einsum("nk,nk->n", user_factors[user], item_factors[item])
        + 0.30 * i[item, 1]  # popular items please
        - 0.40 * u[user, 6] * i[item, 0]  # discount hunters dislike expensive items
        + 0.20 * u[user, 1]  # long-standing users are more generous
        - 0.15 * i[item, 3]  # old items disappoint a little
        + 0.25 * np.tanh(u[user, 3])  # engaged users rate higher
        - 0.004 * (age[user] - 44) * i[item, 1]  # older users care less for what is popular
    )
    rating = np.clip(mu + rng.normal(0, spec.noise, spec.ratings), 0.0, 5.0)
    expected = expected_clipped(mu, spec.noise, 0.0, 5.0)

    order = rng.permutation(spec.ratings)
    n_test = max(1, int(spec.ratings * spec.test_fraction))
    n_val = max(1, int(spec.ratings * spec.validation_fraction))
    test_idx, val_idx, train_idx = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]

    # Dense features enter the model standardised with statistics of the training rows' entities.
    train_users, train_items = np.unique(user[train_idx]), np.unique(item[train_idx])
    user_dense = _normalise_log(user_raw, train_users)
    item_dense = _normalise_log(item_raw, train_items)

    users = EntityTable(
        kind="user",
        keys=np.arange(n_users, dtype=np.int64),
        id_rows=torch.arange(n_users),
        id_table_rows=n_users,
        dense=torch.from_numpy(user_dense).float(),
        dense_names=list(USER_DENSE),
    )
    names = [CATEGORY_NAMES[c % len(CATEGORY_NAMES)] + ("" if c < len(CATEGORY_NAMES) else f"-{c}") for c in category]
    items = EntityTable(
        kind="item",
        keys=np.arange(n_items, dtype=np.int64),
        id_rows=torch.arange(n_items),
        id_table_rows=n_items,
        dense=torch.from_numpy(item_dense).float(),
        dense_names=list(ITEM_DENSE),
        sparse={"category": torch.from_numpy(category).long().unsqueeze(1)},
        sparse_sizes={"category": spec.categories},
        titles=[f"item {idx} ({name}, ${price[idx]:.2f})" for idx, name in enumerate(names)],
    )
    all_ratings = Ratings(
        user=torch.from_numpy(user).long(),
        item=torch.from_numpy(item).long(),
        rating=torch.from_numpy(rating).float(),
    )
    expected_t = torch.from_numpy(expected).float()
    splits = {
        name: torch.from_numpy(idx) for name, idx in (("train", train_idx), ("validation", val_idx), ("test", test_idx))
    }
    return Dataset(
        catalog=Catalog(users=users, items=items, rating_min=0.0, rating_max=5.0),
        train=all_ratings.subset(splits["train"]),
        validation=all_ratings.subset(splits["validation"]),
        test=all_ratings.subset(splits["test"]),
        source={"kind": "synthetic", **asdict(spec)},
        expected={name: expected_t[idx] for name, idx in splits.items()},
    )


def _normalise_log(raw: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """log1p of non-negative heavy-tailed columns, then z-scores with statistics of the training entities."""
    values = np.where(raw.min(axis=0) >= 0, np.log1p(np.abs(raw)), raw)
    mean = values[train_rows].mean(axis=0)
    std = values[train_rows].std(axis=0) + 1e-6
    return (values - mean) / std
