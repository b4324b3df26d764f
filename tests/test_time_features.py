"""Time features: context columns derived from each rating's timestamp (--time-features)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import assert_error
from fixtures import write_ml1m

from dlrm_cli.config import FileSource, source_from_dict
from dlrm_cli.data.context import RawContext
from dlrm_cli.data.features import SECONDS_A_DAY, split_rows, with_time_features
from dlrm_cli.data.readers import RawData, read_movielens
from dlrm_cli.data.sources import load_dataset, parse_data_option
from dlrm_cli.errors import DlrmUsageError

FAST = ["--epochs", "1", "--embedding-dim", "8", "--batch-size", "256", "--retrieval", "none"]
DAY = int(SECONDS_A_DAY)


def _raw(time: list[int]) -> RawData:
    n = len(time)
    return RawData(
        user=np.array([1, 1, 2, 2, 1][:n]),
        item=np.array([7, 7, 7, 9, 9][:n]),
        rating=np.ones(n, dtype=np.float32),
        time=np.array(time, dtype=np.int64),
        rating_range=(1.0, 5.0),
    )


def test_firsts_come_from_the_training_rows_only():
    # user 1 rates on days 10, 12 and (a test row, not in training) day 3; user 2 only in a test row
    raw = _raw([10 * DAY, 12 * DAY, 3 * DAY, 20 * DAY, 3 * DAY])
    train = np.array([0, 1, 3])
    context = with_time_features(raw, train, ("user_days", "item_days", "weekday", "year", "user_day"))
    user_days = context.dense["user_days"]
    # days since the user's first training rating (day 10); the test row before it counts as day 0
    assert np.allclose(user_days, [0, 2, 0, 0, 0])
    item_days = context.dense["item_days"]  # item 7 first rated in training on day 10, item 9 on day 20
    assert np.allclose(item_days, [0, 2, 0, 0, 0])
    assert context.sparse["weekday"].tolist() == ["sun", "tue", "sun", "wed", "sun"]  # 1970-01-01 was a Thursday
    assert context.dense["year"][0] == pytest.approx(1970 + 10 / 365.2425)
    assert context.sparse["user_day"].tolist()[:2] == ["1:10", "1:12"]


def test_vocabularies_and_statistics_come_from_training_rows(tmp_path):
    source = parse_data_option(f"movielens:{write_ml1m(tmp_path / 'ml')}", time_features=("weekday", "year"))
    dataset = load_dataset(source)
    context = dataset.catalog.context
    assert context is not None and context.names == ["year", "weekday"]
    raw = read_movielens(tmp_path / "ml")
    train_rows = dataset.train.context.dense[:, 0]
    assert abs(float(train_rows.mean())) < 1e-3  # standardised with the training rows' own mean and deviation
    assert float(train_rows.std()) == pytest.approx(1.0, abs=1e-2)
    assert len(raw) == len(dataset.train) + len(dataset.validation) + len(dataset.test)
    assert set(context.vocabularies["weekday"]) <= {"mon", "tue", "wed", "thu", "fri", "sat", "sun"}


def test_recorded_with_the_source_and_absent_when_none():
    with_features = FileSource(kind="movielens", path="/x", time_features=("year",))
    assert source_from_dict(with_features.to_dict()) == with_features
    plain = FileSource(kind="movielens", path="/x")
    assert "time_features" not in plain.to_dict()  # records written before the option read the same
    assert source_from_dict(plain.to_dict()).time_features == ()


def test_train_predict_and_evaluate_with_time_features(dlrm, tmp_path):
    data = f"movielens:{write_ml1m(tmp_path / 'ml')}"
    result = dlrm("train", "--data", data, "--time-features", "year,weekday", "--name", "t", *FAST)
    assert result.exit_code == 0, result.output
    assert "Context columns" in result.output and "year, weekday" in result.output
    answer = json.loads(dlrm("predict", "--checkpoint", "t", "--user", "1", "--items", "2,3", "--json").stdout)
    assert set(answer["context"]) == {"year", "weekday"}
    assert sorted(answer["context_defaulted"]) == ["weekday", "year"]
    evaluated = dlrm("evaluate", "--checkpoint", "t", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    meta = json.loads((dlrm.store / "t" / "meta.json").read_text())
    assert meta["run"]["data"]["time_features"] == ["year", "weekday"]
    resumed = dlrm("train", "--resume", "t", "--epochs", "2")  # rebuilds the same features from the record
    assert resumed.exit_code == 0, resumed.output


def test_refusals(dlrm, tmp_path):
    assert_error(dlrm("train", "--time-features", "year", *FAST), 2, "--time-features applies to movielens:")
    data = f"movielens:{write_ml1m(tmp_path / 'ml')}"
    assert_error(dlrm("train", "--data", data, "--time-features", "moon", *FAST), 2, "unknown time feature 'moon'")
    assert_error(dlrm("train", "--data", data, "--time-features", "year,year", *FAST), 2, "lists 'year' more than once")
    with pytest.raises(DlrmUsageError, match="needs timestamps"):
        with_time_features(replace(_raw([0, 1]), time=None), np.arange(2), ("year",))


def test_evaluate_data_derives_the_time_features_of_each_row(dlrm, tmp_path):
    folder = write_ml1m(tmp_path / "ml")
    data = f"movielens:{folder}"
    assert dlrm("train", "--data", data, "--time-features", "year,weekday", "--name", "t", *FAST).exit_code == 0
    own = json.loads(dlrm("evaluate", "--checkpoint", "t", "--split", "test", "--json").stdout)
    whole = json.loads(dlrm("evaluate", "--checkpoint", "t", "--data", data, "--json").stdout)
    assert whole["count"] > own["count"]
    from dlrm_cli import load
    from dlrm_cli.scoring.evaluation import _ratings_from, source_to_score

    loaded = load("t", store=dlrm.store).loaded
    rows = _ratings_from(loaded, source_to_score(loaded, data))
    source = loaded.checkpoint.run.data
    dataset = load_dataset(source)
    test = split_rows(read_movielens(folder), source.split, source.seed, source.validation)["test"]
    # every row in its own context, as training saw it, not at the defaults
    assert torch.allclose(rows.context.dense[test], dataset.test.context.dense, atol=1e-5)
    assert torch.equal(rows.context.sparse["weekday"][test], dataset.test.context.sparse["weekday"])
    assert dlrm("train", "--data", data, "--time-features", "user_days", "--name", "u", *FAST).exit_code == 0
    assert_error(dlrm("evaluate", "--checkpoint", "u", "--data", data), 2, "cannot rebuild user_days")


def test_a_time_feature_never_replaces_a_column_of_the_data(tmp_path):
    raw = replace(_raw([0, DAY]), context=RawContext(sparse={"weekday": np.array(["x", "y"])}))
    with pytest.raises(DlrmUsageError, match="would replace the data's own column 'weekday'"):
        with_time_features(raw, np.arange(2), ("weekday",))
