"""Built-in data: synthetic ratings that a model can learn, with a known noise floor.

Each user and item has hidden biases and latent factors, and observable dense features that move the
rating (popular items score higher, price-sensitive users mark expensive items down, ...). Each rating also
has a context: the ``channel`` it came through (web, app or email) and its ``hour`` (0-23), both observable.
The channel's effect depends on the item's category and, for email, on the user's discount usage; ratings
given late at night are a little harsher. A rating is
``clip(mu + noise, 0, 5)`` with Gaussian noise of a known size, so the best possible prediction of each
rating, E[clip(mu + noise)], is known exactly, and with it the RMSE a perfect model would get.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from dlrm_cli.config import SyntheticSpec
from dlrm_cli.data.catalog import Catalog, Dataset, EntityTable, Ratings
from dlrm_cli.data.context import RawContext, build_context

USER_DENSE = [
    "user_age",
    "tenure_days",
    "sessions_per_week",
    "avg_time_on_page",
    "avg_clicks_per_session",
    "purchases_last_year",
    "discount_usage_rate",
]
GLOBAL_MEAN = 3.2  # the expected rating before biases, tastes and feature effects
ITEM_DENSE = ["price", "popularity", "avg_review_length", "days_since_release", "discount_pct", "stock_level"]
CHANNELS = ["web", "app", "email"]  # the values of the ``channel`` context column
CHANNEL_SHARES = (0.5, 0.3, 0.2)  # how often each channel carries a rating
EMAIL_LIFT = 0.3  # per standard deviation of a user's discount usage, on email
HOUR_EFFECT = 0.15  # the daily cycle's amplitude: lowest at midnight, highest at noon
CATEGORY_NAMES = [
    "books", "electronics", "garden", "toys", "kitchen", "music", "films", "sports", "fashion", "beauty",
    "games", "tools", "office", "pets", "baby", "health", "travel", "food", "art", "auto",
]  # fmt: skip


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


@dataclass(frozen=True)
class Truth:
    """The generator's hidden parameters, which no model sees: each rating's user and item, their biases and
    latent factors (an item's factors include its category's offset), and the effect of the observable
    features on each rating. ``mean`` is each rating's expected value before noise and clipping."""

    user: np.ndarray
    item: np.ndarray
    category: np.ndarray  # of each item
    user_bias: np.ndarray
    item_bias: np.ndarray
    category_bias: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    category_factors: np.ndarray
    feature_effect: np.ndarray  # of each rating
    context: ContextTruth | None = None  # drawn last (``_in_context``)

    @property
    def context_effect(self) -> np.ndarray:
        """The effect of each rating's own context (its channel and hour) on its mean."""
        if self.context is None:
            return np.zeros(len(self.user))
        return self.context_effect_in(self.context.channel, self.context.hour)

    def context_effect_in(self, channel: np.ndarray | int, hour: np.ndarray | int) -> np.ndarray:
        """The effect on each rating's mean had it come through ``channel`` (an index of ``CHANNELS``) at ``hour``."""
        return self.context.effect(self.user, self.category[self.item], channel, hour)  # type: ignore[union-attr]

    def mean_in(self, channel: np.ndarray | int, hour: np.ndarray | int) -> np.ndarray:
        """Each rating's mean had it come through ``channel`` at ``hour`` instead of its own context."""
        return self.mean - self.context_effect + self.context_effect_in(channel, hour)

    @property
    def shared_effect(self) -> np.ndarray:
        """The part of each rating's mean that is no single user's or item's own: the global mean, the item's
        category's bias, the feature effects and the context's."""
        return GLOBAL_MEAN + self.category_bias[self.category[self.item]] + self.feature_effect + self.context_effect

    @property
    def mean(self) -> np.ndarray:
        user, item = self.user, self.item
        return (  # summed in the order the data set was first drawn with (floats round by order)
            GLOBAL_MEAN
            + self.user_bias[user]
            + self.item_bias[item]
            + self.category_bias[self.category[item]]
            + np.einsum("nk,nk->n", self.user_factors[user], self.item_factors[item])
            + self.feature_effect
            + self.context_effect
        )

    def expected_without_context(self, noise: float) -> np.ndarray:
        """The best prediction of each rating by a model that knows every hidden parameter but not the rating's
        context: E[clip(mu + noise)] averaged over the channels and hours the generator draws."""
        if self.context is None:
            return expected_clipped(self.mean, noise, 0.0, 5.0)
        total = np.zeros(len(self.user))
        for channel, share in enumerate(CHANNEL_SHARES):
            for hour in range(24):
                total += share / 24 * expected_clipped(self.mean_in(channel, hour), noise, 0.0, 5.0)
        return total


@dataclass(frozen=True)
class ContextTruth:
    """Each rating's context and the hidden parameters of its effect: per channel and category an offset,
    per user the lift of email (discount hunters like offers), and a daily cycle of the hour."""

    channel: np.ndarray  # of each rating, an index of ``CHANNELS``
    hour: np.ndarray  # of each rating, 0-23
    channel_category: np.ndarray  # channels x categories
    email_lift: np.ndarray  # of each user

    def effect(
        self, user: np.ndarray, category: np.ndarray, channel: np.ndarray | int, hour: np.ndarray | int
    ) -> np.ndarray:
        """The effect of ``channel`` and ``hour`` on the mean of ratings of ``user`` for items of ``category``."""
        email = np.asarray(channel) == CHANNELS.index("email")
        daily = -HOUR_EFFECT * np.cos(2 * np.pi * np.asarray(hour, dtype=np.float64) / 24)  # harsher at night
        return self.channel_category[channel, category] + email * self.email_lift[user] + daily


@dataclass(frozen=True)
class Draws:
    """Everything the generator draws for a spec: the observable features, the hidden truth, the ratings
    and the order that splits them (test rows first, then validation, then training)."""

    user_raw: np.ndarray
    item_raw: np.ndarray
    truth: Truth
    rating: np.ndarray
    order: np.ndarray

    @property
    def context(self) -> RawContext:
        """Each rating's raw context columns: ``hour`` (numeric) and ``channel`` (categorical); none for a
        spec without context."""
        context = self.truth.context
        if context is None:
            return RawContext()
        return RawContext({"hour": context.hour.astype(np.float64)}, {"channel": np.array(CHANNELS)[context.channel]})

    def splits(self, spec: SyntheticSpec) -> dict[str, np.ndarray]:
        n_test = max(1, int(spec.ratings * spec.test_fraction))
        n_val = max(1, int(spec.ratings * spec.validation_fraction))
        order = self.order
        return {"train": order[n_test + n_val :], "validation": order[n_test : n_test + n_val], "test": order[:n_test]}


def draw(spec: SyntheticSpec) -> Draws:
    """The random draws behind ``generate(spec)``; the same spec always gives the same draws."""
    rng = np.random.default_rng(spec.seed)  # the order of the draws below is part of the data set
    user_raw = _user_features(rng, spec.users)
    category, item_raw = _item_features(rng, spec)
    truth = _who_rates_what(rng, spec, user_raw, item_raw, category)
    noise = rng.normal(0, spec.noise, spec.ratings)
    order = rng.permutation(spec.ratings)
    if spec.context:  # drawn last: the draws above are those of the data without context
        truth = _in_context(rng, spec, truth, _standardise(user_raw)[:, 6])
    return Draws(user_raw, item_raw, truth, np.clip(truth.mean + noise, 0.0, 5.0), order)


def generate(spec: SyntheticSpec) -> Dataset:
    """Generate the data set for ``spec``; the same spec always gives the same data."""
    draws = draw(spec)
    truth, user_raw, item_raw = draws.truth, draws.user_raw, draws.item_raw
    user, item, category = truth.user, truth.item, truth.category
    expected = torch.from_numpy(expected_clipped(truth.mean, spec.noise, 0.0, 5.0)).float()
    splits = {name: torch.from_numpy(rows) for name, rows in draws.splits(spec).items()}
    # Dense features enter the model standardised with statistics of the training rows' entities.
    train_rows = splits["train"].numpy()
    users = _entities("user", _normalise_log(user_raw, np.unique(user[train_rows])), USER_DENSE)
    items = _entities("item", _normalise_log(item_raw, np.unique(item[train_rows])), ITEM_DENSE)
    names = [CATEGORY_NAMES[c % len(CATEGORY_NAMES)] + ("" if c < len(CATEGORY_NAMES) else f"-{c}") for c in category]
    items.sparse = {"category": torch.from_numpy(category).long().unsqueeze(1)}
    items.sparse_sizes = {"category": spec.categories}
    items.titles = [f"item {idx} ({name}, ${item_raw[idx, 0]:.2f})" for idx, name in enumerate(names)]
    rating = torch.from_numpy(draws.rating).float()
    raw_context = draws.context
    context = build_context(raw_context, train_rows) if raw_context else None  # from the training rows
    rows_context = context.encode(raw_context) if context is not None else None
    everything = Ratings(torch.from_numpy(user).long(), torch.from_numpy(item).long(), rating, rows_context)
    return Dataset(
        catalog=Catalog(users=users, items=items, rating_min=0.0, rating_max=5.0, context=context),
        train=everything.subset(splits["train"]),
        validation=everything.subset(splits["validation"]),
        test=everything.subset(splits["test"]),
        source=spec,
        expected={name: expected[rows] for name, rows in splits.items()},
    )


def _user_features(rng: np.random.Generator, n_users: int) -> np.ndarray:
    """Observable user features, U x 7 (the columns of ``USER_DENSE``)."""
    age = rng.uniform(18, 70, n_users)
    tenure = rng.exponential(400, n_users)
    sessions = rng.gamma(2.0, 2.0, n_users)
    time_on_page = rng.lognormal(3.5, 0.6, n_users)
    clicks = rng.poisson(6, n_users).astype(float)
    purchases = rng.poisson(3 + sessions).astype(float)
    discount_usage = rng.beta(2, 3, n_users)
    return np.stack([age, tenure, sessions, time_on_page, clicks, purchases, discount_usage], axis=1)


def _item_features(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """Each item's category, and its observable features, I x 6 (the columns of ``ITEM_DENSE``)."""
    n_items = spec.items
    category = rng.integers(0, spec.categories, n_items)
    price = rng.lognormal(3.0, 0.8, n_items)
    popularity = rng.normal(0, 1, n_items)
    review_length = rng.lognormal(4.5, 0.5, n_items)
    days_since_release = rng.uniform(0, 2000, n_items)
    discount_pct = rng.uniform(0, 40, n_items)
    stock = rng.poisson(50, n_items).astype(float)
    return category, np.stack([price, popularity, review_length, days_since_release, discount_pct, stock], axis=1)


def _who_rates_what(
    rng: np.random.Generator, spec: SyntheticSpec, user_raw: np.ndarray, item_raw: np.ndarray, category: np.ndarray
) -> Truth:
    """The user and item of each rating (active users and popular items more often), and the hidden
    parameters of its expected value before noise: biases, latent tastes and effects of the observable features."""
    n_users, n_items, k = spec.users, spec.items, spec.factors
    user_bias = rng.normal(0, 0.3, n_users)
    item_bias = rng.normal(0, 0.3, n_items)
    category_bias = rng.normal(0, 0.25, spec.categories)
    user_factors = rng.normal(0, 0.4, (n_users, k))
    item_own = rng.normal(0, 0.3, (n_items, k))
    category_factors = rng.normal(0, 0.3, (spec.categories, k))
    user_weight = rng.pareto(2.0, n_users) + 0.5
    item_weight = np.exp(0.8 * item_raw[:, 1])
    user = rng.choice(n_users, spec.ratings, p=user_weight / user_weight.sum())
    item = rng.choice(n_items, spec.ratings, p=item_weight / item_weight.sum())
    u, i = _standardise(user_raw), _standardise(item_raw)
    feature_effect = (
        0.30 * i[item, 1]  # popular items please
        - 0.40 * u[user, 6] * i[item, 0]  # discount hunters dislike expensive items
        + 0.20 * u[user, 1]  # long-standing users are more generous
        - 0.15 * i[item, 3]  # old items disappoint a little
        + 0.25 * np.tanh(u[user, 3])  # engaged users rate higher
        - 0.004 * (user_raw[user, 0] - 44) * i[item, 1]  # older users care less for what is popular
    )
    return Truth(
        user=user,
        item=item,
        category=category,
        user_bias=user_bias,
        item_bias=item_bias,
        category_bias=category_bias,
        user_factors=user_factors,
        item_factors=item_own + category_factors[category],
        category_factors=category_factors,
        feature_effect=feature_effect,
    )


def _in_context(rng: np.random.Generator, spec: SyntheticSpec, truth: Truth, discount_usage: np.ndarray) -> Truth:
    """``truth`` with each rating's context drawn (its channel and hour) and the hidden parameters of its
    effect: ``discount_usage`` is each user's, standardised."""
    channel = rng.choice(len(CHANNELS), spec.ratings, p=CHANNEL_SHARES)
    hour = rng.integers(0, 24, spec.ratings)
    channel_category = rng.normal(0, 0.2, (len(CHANNELS), spec.categories))
    context = ContextTruth(channel, hour, channel_category, EMAIL_LIFT * discount_usage)
    return replace(truth, context=context)


def _entities(kind: str, dense: np.ndarray, names: list[str]) -> EntityTable:
    """A table of entities 0..E-1, each its own id row, with standardised dense features."""
    count = len(dense)
    return EntityTable(
        kind=kind,
        keys=np.arange(count, dtype=np.int64),
        id_rows=torch.arange(count),
        id_table_rows=count,
        dense=torch.from_numpy(dense).float(),
        dense_names=list(names),
    )


def _normalise_log(raw: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """log1p of non-negative heavy-tailed columns, then z-scores with statistics of the training entities."""
    values = np.where(raw.min(axis=0) >= 0, np.log1p(np.abs(raw)), raw)
    mean = values[train_rows].mean(axis=0)
    std = values[train_rows].std(axis=0) + 1e-6
    return (values - mean) / std
