"""Generated data with context: the built-in data's channel and hour, their effect on the expected rating,
a model trained on it reading them, and the generator of benchmarks/context_effect.py."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY
from fixtures import load_benchmark

from dlrm_cli.config import CsvColumns, FileSource, SyntheticSpec, source_from_dict
from dlrm_cli.data import synthetic
from dlrm_cli.data.sources import load_dataset
from dlrm_cli.data.synthetic import CHANNELS, EMAIL_LIFT, HOUR_EFFECT, draw, expected_clipped, generate
from dlrm_cli.scoring.metrics import score
from dlrm_cli.store.loading import open_model

SPEC = SyntheticSpec(users=120, items=80, ratings=6_000, seed=2)


def test_the_built_in_data_carries_each_ratings_context_in_every_split():
    draws, dataset = draw(SPEC), generate(SPEC)
    context, splits = dataset.catalog.context, draws.splits(SPEC)
    assert context is not None and context.names == ["hour", "channel"]
    assert context.vocabularies == {"channel": sorted(CHANNELS)}
    assert dataset.catalog.dense_names[-1] == "context_hour" and dataset.catalog.sparse_features[-1] == ("channel", 4)
    hours, channels = draws.truth.context.hour, np.array(CHANNELS)[draws.truth.context.channel]
    train = splits["train"]
    # statistics and the default from the training rows only
    assert context.mean == pytest.approx([hours[train].mean()]) and context.std == pytest.approx([hours[train].std()])
    values, counts = np.unique(channels[train], return_counts=True)
    assert context.defaults["channel"] == values[counts.argmax()]
    for name, rows in splits.items():
        part = dataset.split(name).context
        assert part is not None and len(part) == len(rows)
        decoded = np.array(context.vocabularies["channel"])[part.sparse["channel"][:, 0].numpy() - 1]
        assert decoded.tolist() == channels[rows].tolist()
        restored = part.dense[:, 0].numpy() * context.std[0] + context.mean[0]
        assert np.allclose(restored, hours[rows], atol=1e-4)


def test_the_expected_rating_moves_with_the_context_by_the_known_amount():
    draws, dataset = draw(SPEC), generate(SPEC)
    truth = draws.truth
    user, category = truth.user, truth.category[truth.item]
    discount = (draws.user_raw[:, 6] - draws.user_raw[:, 6].mean()) / (draws.user_raw[:, 6].std() + 1e-8)
    web, email = CHANNELS.index("web"), CHANNELS.index("email")
    table = truth.context.channel_category
    # the same pairs, at noon, through email rather than the web: the channel-by-category offsets and the lift
    # of email for discount hunters
    moved = truth.mean_in(email, 12) - truth.mean_in(web, 12)
    assert np.allclose(moved, table[email, category] - table[web, category] + EMAIL_LIFT * discount[user])
    assert np.allclose(truth.mean_in(web, 0) - truth.mean_in(web, 12), -2 * HOUR_EFFECT)  # midnight against noon
    # the expected value of each rating is in its own context
    effect = truth.context_effect
    assert np.std(effect) > 0.15
    for name, rows in draws.splits(SPEC).items():
        expected = dataset.expected[name].numpy()
        assert np.allclose(expected, expected_clipped(truth.mean[rows], SPEC.noise, 0.0, 5.0), atol=1e-5)
        blind = expected_clipped(truth.mean[rows] - effect[rows], SPEC.noise, 0.0, 5.0)
        assert np.abs(expected - blind).max() > 0.3
    # a model that knows everything but the context does worse than one that reads it
    rmse = {
        "with": np.sqrt(np.mean((expected_clipped(truth.mean, SPEC.noise, 0.0, 5.0) - draws.rating) ** 2)),
        "without": np.sqrt(np.mean((truth.expected_without_context(SPEC.noise) - draws.rating) ** 2)),
    }
    assert rmse["without"] > 1.03 * rmse["with"]


def test_the_context_is_drawn_last_so_the_other_draws_stay():
    """Users, items, their parameters, the noise and the splits are drawn as before the context existed."""
    spec = SyntheticSpec(users=50, items=40, ratings=1_000, seed=5)
    draws = draw(spec)
    rng = np.random.default_rng(spec.seed)
    user_raw = synthetic._user_features(rng, spec.users)
    category, item_raw = synthetic._item_features(rng, spec)
    before = synthetic._who_rates_what(rng, spec, user_raw, item_raw, category)
    noise = rng.normal(0, spec.noise, spec.ratings)
    assert np.array_equal(draws.order, rng.permutation(spec.ratings))
    assert np.array_equal(draws.truth.user, before.user) and np.array_equal(draws.truth.item, before.item)
    assert np.array_equal(draws.truth.feature_effect, before.feature_effect)
    rating = np.clip(before.mean + draws.truth.context_effect + noise, 0.0, 5.0)  # the same noise, moved
    assert np.allclose(draws.rating, rating, atol=1e-12)


def test_a_record_from_before_the_context_columns_gives_the_data_it_was_trained_on():
    """A checkpoint of the built-in data written before it had context columns records no ``context``: it
    evaluates and resumes on the data it was trained on, without them."""
    record = SPEC.to_dict()
    assert record["context"] is True and source_from_dict(record) == SPEC
    del record["context"]
    before = source_from_dict(record)
    assert before == replace(SPEC, context=False)
    old, new = generate(before), generate(SPEC)
    assert old.catalog.context is None and old.train.context is None and "context_hour" not in old.catalog.dense_names
    assert torch.equal(old.train.user, new.train.user) and torch.equal(old.test.item, new.test.item)
    truth = draw(SPEC).truth
    rows = draw(SPEC).splits(SPEC)["train"]
    moved = np.clip(old.train.rating.numpy() + truth.context_effect[rows], 0.0, 5.0)
    unclipped = (old.train.rating.numpy() > 0) & (old.train.rating.numpy() < 5)
    assert np.allclose(moved[unclipped], new.train.rating.numpy()[unclipped], atol=1e-5)


def test_a_model_trained_on_the_built_in_data_reads_the_context(dlrm):
    result = dlrm("train", "--epochs", "2", "--name", "ctx", *TINY)
    assert result.exit_code == 0, result.output
    meta = json.loads((dlrm.store / "ctx" / "meta.json").read_text())
    assert meta["features"]["dense"][-1] == "context_hour" and meta["features"]["sparse"][-1] == "channel"
    loaded = open_model(dlrm.store, "ctx")
    users, items = torch.arange(40), torch.arange(40)
    device = torch.device("cpu")
    ratings = {}
    for channel in CHANNELS:
        rows, _ = loaded.catalog.context.parse({"channel": channel, "hour": 12})
        ratings[channel] = score(loaded.model, loaded.catalog, users, items, device, context=rows)
    assert not torch.allclose(ratings["web"], ratings["email"], atol=1e-3)
    assert not torch.allclose(ratings["web"], ratings["app"], atol=1e-3)


def test_the_context_benchmarks_generator_gives_its_documented_optimum(tmp_path):
    bench = load_benchmark("context_effect")
    generated = bench.generate(users=30, items=20, ratings=3_000, seed=1)
    again = bench.generate(users=30, items=20, ratings=3_000, seed=1)
    assert generated.frame.equals(again.frame)
    frame = generated.frame
    assert set(frame["channel"]) == set(bench.CHANNELS) and frame["hour"].between(0, 23).all()
    assert frame.groupby("item")["category"].nunique().max() == 1  # a side column of the items
    rating = frame["rating"].to_numpy()
    mean = generated.mean_in(generated.channel, generated.hour)
    inside = (rating > bench.LOW) & (rating < bench.HIGH)
    assert np.std(rating[inside] - mean[inside]) == pytest.approx(bench.NOISE, rel=0.1)
    # without the context: E[clip(mu + noise)] averaged over the contexts the generator draws, here by sampling
    rng = np.random.default_rng(0)
    channels = rng.choice(len(bench.CHANNELS), 4_000, p=bench.SHARES)
    hours = rng.integers(0, 24, 4_000)
    row = 7
    sampled = [generated.mean_in(c, h)[row] for c, h in zip(channels, hours, strict=True)]
    averaged = expected_clipped(np.array(sampled), bench.NOISE, bench.LOW, bench.HIGH).mean()
    assert generated.best_without_context()[row] == pytest.approx(averaged, abs=0.02)
    # the validation rows are those dlrm trains with
    path = tmp_path / "ratings.csv"
    frame.to_csv(path, index=False)
    rows = bench.validation_rows(generated, 1)
    columns = CsvColumns(sparse=("category", "channel"), dense=("hour",), rating_range=(bench.LOW, bench.HIGH))
    source = FileSource("csv", str(path), split=bench.SPLIT, seed=1, validation=bench.VALIDATION, columns=columns)
    validation = load_dataset(source).validation
    assert sorted(validation.rating.tolist()) == pytest.approx(sorted(rating[rows].tolist()), abs=1e-6)
    floors = bench.bayes_optimal(generated, rows)
    assert floors["with"] < floors["without"]
    assert math.isclose(floors["with"], np.sqrt(np.mean((generated.best_with_context()[rows] - rating[rows]) ** 2)))
