"""Ratings of MovieLens 25M's shape, written as a MovieLens release (ratings.csv and movies.csv).

    .venv/bin/python benchmarks/ml25m_shape.py DIR [--users 162541] [--items 59047] [--ratings 25000095]
                                                   [--heaviest-user 32202] [--heaviest-item 81491] [--seed 0]

ML-25M's own figures are the defaults: 162,541 users with at least 20 ratings each, 59,047 rated films, 25,000,095
ratings in half stars from 0.5 to 5, the heaviest user with 32,202 ratings and the most-rated film with 81,491. The
heavy tails are what make the implicit-feedback bags expensive: each training sample looks up its user's and its
film's whole bag, so the cost of a sample grows with the sum of the squared counts (printed as "bag rows a sample").

How it is drawn:
- Each user's count is a quantile of a power law with a floor of 20, whose exponent is solved so that the counts add
  up to ``--ratings`` with the heaviest at ``--heaviest-user``.
- Each user picks that many distinct films with a popularity weight. Repeats are drawn again, at first by
  popularity, then uniformly, so that the heaviest users can reach the rare films.
- The weights are a power law in the film's rank, with an offset solved so that the most-rated film gets about
  ``--heaviest-item`` ratings. One rating of each film is set aside for it first, so that every film is rated.
- A rating is ``3.5 + user bias + film bias + a rank-8 taste + noise``, rounded to half stars and clipped to 0.5 to 5.
- Timestamps are uniform over ML-25M's span. Film ids are a sorted random subset of 1..209,171, as sparse as ML-25M's.

It prints the shape it drew: counts, the heaviest user and film, and the bag rows a sample.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ML25M = {"users": 162_541, "items": 59_047, "ratings": 25_000_095, "heaviest_user": 32_202, "heaviest_item": 81_491}
MIN_USER_RATINGS = 20
MAX_MOVIE_ID = 209_171
FIRST_TIME, LAST_TIME = 789_652_009, 1_574_327_703


@dataclass
class Shape:
    """Drawn ratings: parallel arrays of user row, item row, rating and timestamp, users' rows sorted."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    users: int
    items: int

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        return np.bincount(self.user, minlength=self.users), np.bincount(self.item, minlength=self.items)

    def bag_rows_a_sample(self) -> float:
        """The bag values a training sample looks up on average: its user's count plus its item's."""
        per_user, per_item = self.counts()
        return float((per_user.astype(np.float64) ** 2).sum() + (per_item.astype(np.float64) ** 2).sum()) / len(
            self.user
        )


def user_counts(users: int, ratings: int, heaviest: int) -> np.ndarray:
    """Counts of ``users`` users, each >= 20, summing to ``ratings``, the largest ``heaviest``: quantiles of a
    power law ``20 + a (q^(-1/alpha) - 1)``, alpha solved by bisection so that the sum is right."""
    if ratings < MIN_USER_RATINGS * users or heaviest < MIN_USER_RATINGS or heaviest * users < ratings:
        raise ValueError(f"no {users} users of >= {MIN_USER_RATINGS} and <= {heaviest} ratings make {ratings}")
    quantiles = (np.arange(users) + 0.5) / users
    top = 0.5 / users

    def counts_for(alpha: float) -> np.ndarray:
        scale = (heaviest - MIN_USER_RATINGS) / (top ** (-1 / alpha) - 1)
        return MIN_USER_RATINGS + scale * (quantiles ** (-1 / alpha) - 1)

    low, high = 0.05, 50.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if counts_for(middle).sum() < ratings else (low, middle)
    counts = np.floor(counts_for((low + high) / 2)).astype(np.int64)
    counts[0] = heaviest
    short = ratings - int(counts.sum())
    if abs(short) >= users:
        raise ValueError(f"no power law of {users} users from {MIN_USER_RATINGS} to {heaviest} ratings makes {ratings}")
    counts[1 : 1 + abs(short)] += np.sign(short)  # the rounding's remainder, on the next-heaviest users
    return counts


def item_weights(items: int, counts: np.ndarray, heaviest: int, exponent: float = 1.8) -> np.ndarray:
    """Popularity weights ``(rank + s)^-exponent``, ``s`` solved so that the top item, drawn by users of
    ``counts`` ratings each (a user rates an item once), is rated by about ``heaviest`` users. The exponent gives
    a median item of about 8 ratings, as ML-25M's long tail of rarely rated films."""
    ranks = np.arange(items, dtype=np.float64)

    def top_item_raters(offset: float) -> float:
        weights = (ranks + offset + 1) ** -exponent
        return float((1 - (1 - weights[0] / weights.sum()) ** counts).sum())

    low, high = 0.0, float(items) * 10
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if top_item_raters(middle) > heaviest else (low, middle)
    weights = (ranks + (low + high) / 2 + 1) ** -exponent
    return weights / weights.sum()


def draw_shape(
    users: int, items: int, ratings: int, heaviest_user: int, heaviest_item: int, seed: int = 0, log=print
) -> Shape:
    rng = np.random.default_rng(seed)
    counts = user_counts(users, ratings, heaviest_user)
    if counts.max() > items:
        raise ValueError(f"a user with {counts.max()} ratings cannot rate {items} distinct items")
    if items > ratings:
        raise ValueError(f"{ratings} ratings cannot rate each of {items} items")
    weights = item_weights(items, counts, heaviest_item)
    user = np.repeat(np.arange(users), counts)
    cumulative = np.cumsum(weights)
    item = np.minimum(np.searchsorted(cumulative, rng.random(ratings) * cumulative[-1]), items - 1)
    drawn = np.ones(ratings, dtype=bool)  # False: a rating reserved so that every item has one, never redrawn
    reserved = rng.choice(ratings, items, replace=False)
    item[reserved], drawn[reserved] = rng.permutation(items), False
    for round_ in range(200):
        order = np.lexsort((drawn, item, user))  # a repeat's reserved rating first, so the drawn one is redrawn
        user, item, drawn = user[order], item[order], drawn[order]
        repeated = np.flatnonzero((user[1:] == user[:-1]) & (item[1:] == item[:-1])) + 1
        if len(repeated) == 0:
            break
        if round_ < 3:
            fresh = np.searchsorted(cumulative, rng.random(len(repeated)) * cumulative[-1])
            item[repeated] = np.minimum(fresh, items - 1)
        else:  # what popularity keeps drawing twice, a uniform draw reaches
            item[repeated] = rng.integers(0, items, len(repeated))
    else:
        raise RuntimeError("could not draw distinct items for every user")
    log(f"drew {ratings:,} distinct (user, item) pairs in {round_} rounds")
    factors = 8
    taste = (rng.normal(0, 0.25, (users, factors))[user] * rng.normal(0, 0.25, (items, factors))[item]).sum(1)
    mean = 3.5 + rng.normal(0, 0.4, users)[user] + rng.normal(0, 0.5, items)[item] + taste
    rating = np.clip(np.round((mean + rng.normal(0, 0.8, ratings)) * 2) / 2, 0.5, 5.0)
    timestamp = rng.integers(FIRST_TIME, LAST_TIME, ratings)
    return Shape(user, item, rating, timestamp, users, items)


def write_release(shape: Shape, folder: Path, seed: int = 0) -> None:
    """``folder``/ratings.csv (``userId,movieId,rating,timestamp``) and movies.csv (``movieId,title,genres``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    movie_ids = np.sort(rng.choice(np.arange(1, MAX_MOVIE_ID + 1), shape.items, replace=False))
    order = np.lexsort((shape.timestamp, shape.user))  # ML-25M's order: by user, then by time
    frame = pd.DataFrame(
        {
            "userId": shape.user[order] + 1,
            "movieId": movie_ids[shape.item[order]],
            "rating": shape.rating[order],
            "timestamp": shape.timestamp[order],
        }
    )
    frame.to_csv(folder / "ratings.csv", index=False, float_format="%.1f", chunksize=1_000_000)
    genres = np.array(["Drama", "Comedy", "Action|Adventure", "Thriller", "Romance", "Documentary"])
    movies = pd.DataFrame(
        {
            "movieId": movie_ids,
            "title": [f"Film {movie_id} ({1900 + movie_id % 120})" for movie_id in movie_ids],
            "genres": genres[rng.integers(0, len(genres), shape.items)],
        }
    )
    movies.to_csv(folder / "movies.csv", index=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--users", type=int, default=ML25M["users"])
    parser.add_argument("--items", type=int, default=ML25M["items"])
    parser.add_argument("--ratings", type=int, default=ML25M["ratings"])
    parser.add_argument("--heaviest-user", type=int, default=ML25M["heaviest_user"])
    parser.add_argument("--heaviest-item", type=int, default=ML25M["heaviest_item"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    shape = draw_shape(args.users, args.items, args.ratings, args.heaviest_user, args.heaviest_item, args.seed)
    write_release(shape, args.folder, args.seed)
    per_user, per_item = shape.counts()
    print(
        f"{args.folder}: {len(shape.user):,} ratings of {int((per_user > 0).sum()):,} users and "
        f"{int((per_item > 0).sum()):,} items in {time.perf_counter() - started:.0f} s\n"
        f"heaviest user {per_user.max():,} ratings (median {int(np.median(per_user))}), heaviest item "
        f"{per_item.max():,} (median {int(np.median(per_item))}); bag rows a sample {shape.bag_rows_a_sample():,.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
