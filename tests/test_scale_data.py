"""The generator of ML-25M-shaped ratings (benchmarks/ml25m_shape.py): the shape it promises, and a release
that dlrm reads as it reads MovieLens's own."""

import numpy as np
import pytest
from fixtures import load_benchmark

from dlrm_cli.data.sources import load_dataset, parse_data_option

SHAPE = {"users": 300, "items": 200, "ratings": 12_000, "heaviest_user": 190, "heaviest_item": 240}


def test_the_drawn_ratings_have_the_asked_shape():
    generator = load_benchmark("ml25m_shape")
    shape = generator.draw_shape(**SHAPE, seed=3, log=lambda _: None)
    per_user, per_item = shape.counts()
    assert len(shape.user) == SHAPE["ratings"]
    assert per_user.min() >= generator.MIN_USER_RATINGS and per_user.max() == SHAPE["heaviest_user"]
    assert per_item.min() >= 1  # every item rated
    assert per_item.max() == pytest.approx(SHAPE["heaviest_item"], rel=0.25)
    pairs = shape.user.astype(np.int64) * SHAPE["items"] + shape.item
    assert len(np.unique(pairs)) == len(pairs)  # a user rates an item once
    assert set(np.unique(shape.rating)) <= set(np.arange(1, 11) / 2)
    again = generator.draw_shape(**SHAPE, seed=3, log=lambda _: None)
    assert np.array_equal(shape.item, again.item) and np.array_equal(shape.rating, again.rating)
    assert shape.bag_rows_a_sample() == pytest.approx(
        ((per_user[shape.user] + per_item[shape.item]).astype(float)).mean()
    )


def test_user_counts_refuse_a_shape_that_cannot_be():
    generator = load_benchmark("ml25m_shape")
    with pytest.raises(ValueError, match="no 10 users"):
        generator.user_counts(10, 100, 50)  # fewer than 20 ratings a user
    with pytest.raises(ValueError, match="no power law"):
        generator.user_counts(300, 20_000, 190)  # a mean this near the top leaves no long tail


def test_the_written_release_reads_as_movielens(tmp_path):
    generator = load_benchmark("ml25m_shape")
    shape = generator.draw_shape(**SHAPE, seed=1, log=lambda _: None)
    generator.write_release(shape, tmp_path, seed=1)
    assert (tmp_path / "ratings.csv").read_text().startswith("userId,movieId,rating,timestamp\n")
    data = load_dataset(parse_data_option(f"movielens:{tmp_path}"))
    assert len(data.train) + len(data.validation) + len(data.test) == SHAPE["ratings"]
    assert len(data.catalog.users) == SHAPE["users"]
    assert data.catalog.items.titles is not None
