"""``dlrm_cli.train``: training from Python goes through the command line's core and returns a loaded model."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch
from fixtures import _ratings

from dlrm_cli.errors import DlrmError, DlrmUsageError

# Small and quick: one epoch of 3,000 ratings, one thread so that both runs add up floats in the same order.
SMALL = {"epochs": 1, "seed": 3, "threads": 1, "embedding_dim": 8, "batch_size": 128}
SMALL_ARGS = ["--epochs", "1", "--seed", "3", "--threads", "1", "--embedding-dim", "8", "--batch-size", "128"]


def _frame() -> pd.DataFrame:
    users, items, ratings, _ = _ratings(n_users=60, n_items=40, n=3000, seed=5)
    return pd.DataFrame({"customer": users, "item": items, "rating": ratings, "price": 10.0 + 1.5 * items})


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message, message
    return message


@pytest.mark.slow
def test_a_dataframe_trains_the_checkpoint_the_command_line_trains(dlrm, tmp_path, capsys):
    from dlrm_cli import train

    frame = _frame()
    model = train(frame, name="api", store=dlrm.store, user_col="customer", dense_cols=["price"], **SMALL)
    assert "epoch 1" not in capsys.readouterr().err  # quiet unless progress=True
    csv = tmp_path / "ratings.csv"
    frame.to_csv(csv, index=False)
    result = dlrm("train", "--data", f"csv:{csv}", "--name", "cli", "--user-col", "customer",
                  "--dense-cols", "price", *SMALL_ARGS)  # fmt: skip
    assert result.exit_code == 0, result.output

    from dlrm_cli import load

    cli = load("cli", dlrm.store)
    assert model.name == "api" and model.meta["run"]["train"] == cli.meta["run"]["train"]
    ours, theirs = dict(model.meta["run"]["data"]), dict(cli.meta["run"]["data"])
    assert ours.pop("path") != theirs.pop("path")
    assert {**ours, "fingerprint": None} == {**theirs, "fingerprint": None}
    copied = dlrm.store / ".data"
    assert [p.read_bytes() for p in copied.glob("frame-*.csv")] == [csv.read_bytes()]  # the recorded data
    weights, expected = model.loaded.model.state_dict(), cli.loaded.model.state_dict()
    assert weights.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-6, msg=key)
    from dlrm_cli.data.sources import load_dataset

    dataset = load_dataset(model.loaded.checkpoint.run.data)  # as evaluate and report read it later
    assert len(dataset.train) + len(dataset.validation) + len(dataset.test) == len(frame)
    assert [c["name"] for c in _listed(dlrm)] == ["api", "cli"]  # the copy is no checkpoint


def _listed(dlrm) -> list[dict]:
    import json

    result = dlrm("checkpoints", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    return document["checkpoints"] if isinstance(document, dict) else document


@pytest.mark.slow
def test_a_path_trains_a_model_that_predicts_and_recommends(tmp_path, capsys):
    from dlrm_cli import Model, train

    csv = tmp_path / "ratings.csv"
    _frame().rename(columns={"customer": "user"}).to_csv(csv, index=False)
    model = train(str(csv), store=tmp_path / "store", progress=True, **SMALL)
    assert isinstance(model, Model) and model.meta["run"]["data"]["path"] == str(csv.resolve())
    assert "epoch 1: train loss" in capsys.readouterr().err
    ranking = model.predict(7, [1, 2, 3])
    assert sorted(item.item for item in ranking.items) == ["1", "2", "3"]
    top = model.recommend(7, top=5).ranking.items
    assert len(top) == 5 and all(1 <= item.rating <= 5 for item in top)


def test_a_column_the_frame_lacks_is_a_usage_error_before_any_work(tmp_path):
    from dlrm_cli import train

    with pytest.raises(DlrmUsageError) as error:
        train(_frame(), store=tmp_path / "store", user_col="client", epochs=1)
    assert "client" in _one_line(error) and "customer" in str(error.value)  # names what the frame has
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epoch": 1}, "did you mean epochs?"),
        ({"lr": -1.0}, "lr must be > 0"),
        ({"dropout": 0.99}, "dropout must be >= 0 and <= 0.95"),
        ({"epochs": "two"}, "epochs must be a whole number"),
        ({"bags": 1}, "bags must be True or False"),
        ({"embeddings": "sparse"}, "embeddings must be one of"),
        ({"top_mlp": [64, 0]}, "top_mlp must be positive layer sizes"),
        ({"bottom_mlp": None}, "bottom_mlp must be positive layer sizes"),
        ({"rating_range": (5, 1)}, "rating_range must be (low, high)"),
        ({"dense_cols": ["price", "price"]}, "dense_cols must name distinct columns"),
        ({"users": 10}, "--users applies only to --data synthetic"),
    ],
)
def test_bad_options_are_one_line_usage_errors(tmp_path, options, message):
    from dlrm_cli import train

    with pytest.raises(DlrmUsageError) as error:
        train(_frame(), store=tmp_path / "store", user_col="customer", **options)
    assert message in _one_line(error)


def test_an_empty_frame_or_a_missing_file_says_so(tmp_path):
    from dlrm_cli import train

    with pytest.raises(DlrmUsageError) as error:
        train(_frame().iloc[:0], store=tmp_path / "store", user_col="customer")
    assert "the DataFrame has no rows" in _one_line(error)
    with pytest.raises(DlrmError) as error:
        train(tmp_path / "missing.csv", store=tmp_path / "store", epochs=1)
    assert "does not exist" in _one_line(error)
    with pytest.raises(DlrmUsageError, match="data must be a pandas DataFrame"):
        train(42, store=tmp_path / "store")


def test_train_is_exported_lazily():
    code = (
        "import sys, dlrm_cli; heavy = {'torch', 'numpy', 'pandas'} & set(sys.modules); "
        "from dlrm_cli import train; from dlrm_cli.api import train as api_train; "
        "print(sorted(heavy), train is api_train)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] True"


def test_numpy_numbers_are_taken_and_a_taken_name_is_refused_before_the_frame_is_written(tmp_path):
    import numpy as np

    from dlrm_cli import train
    from dlrm_cli.training.request import python_options

    values, _ = python_options({"epochs": np.int64(3), "lr": np.float32(0.5), "bottom_mlp": np.array([32, 16])})
    assert values["epochs"] == 3 and type(values["epochs"]) is int
    assert values["lr"] == 0.5 and values["bottom_mlp"] == (32, 16)
    store = tmp_path / "store"
    (store / "taken").mkdir(parents=True)
    with pytest.raises(DlrmUsageError, match="checkpoint taken already exists"):
        train(_frame(), store=store, name="taken", user_col="customer", epochs=1)
    assert not (store / ".data").exists()  # nothing written for a run that was refused
