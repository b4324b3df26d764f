"""Context columns from the command line and the Python API: predict, recommend (one user and --all-users),
score and evaluate, in a context given or at each column's default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import Dlrm, assert_error

from dlrm_cli.errors import DlrmUsageError

FAST = ["--epochs", "4", "--embedding-dim", "8", "--batch-size", "128", "--retrieval", "none"]
CONTEXT = ["--sparse-cols", "channel", "--dense-cols", "hour"]
USER, ITEMS = "u3", ["i1", "i2", "i5"]


def _write(path: Path, n: int, seed: int, channels: list[str], hours: tuple[float, float]) -> Path:
    """Ratings whose channel moves them by a whole star (app +1, web -1, anything else 0) and whose hour of
    the day by 0.08 a star per hour from noon; each user and item has a small bias of its own."""
    rng = np.random.default_rng(seed)
    biases = np.random.default_rng(0).normal(0, 0.3, (2, 60))  # the same users and items in every file
    user, item = rng.integers(0, 60, n), rng.integers(0, 40, n)
    channel = rng.choice(channels, n)
    hour = rng.uniform(*hours, n).round(1)
    effect = np.select([channel == "app", channel == "web"], [1.0, -1.0], 0.0)
    rating = 3 + biases[0][user] + biases[1][item] + effect + 0.08 * (np.clip(hour, 0, 24) - 12) + rng.normal(0, 0.2, n)
    frame = pd.DataFrame(
        {"user": [f"u{u}" for u in user], "item": [f"i{i}" for i in item], "rating": np.clip(rating, 1, 5).round(2)}
    )
    frame["channel"], frame["hour"] = channel, hour
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training rows (channel app or web, hours 0 to 24) and test rows that only the test file has: channel
    kiosk, hours 100 to 110."""
    folder = tmp_path_factory.mktemp("context")
    _write(folder / "train.csv", 4000, 1, ["app", "web"], (0, 24))
    _write(folder / "test.csv", 300, 2, ["kiosk", "app", "web"], (100, 110))
    return folder


@pytest.fixture(scope="module")
def store(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with ``ctx`` (trained on the context columns) and ``plain`` (the same ratings without them)."""
    store = tmp_path_factory.mktemp("context-store") / "store"
    dlrm = Dlrm(store)
    plain = data / "plain.csv"
    pd.read_csv(data / "train.csv")[["user", "item", "rating"]].to_csv(plain, index=False)
    result = dlrm("train", "--data", f"csv:{plain}", *FAST, "--name", "plain")
    assert result.exit_code == 0, result.output
    split = ["--split", "files:train.csv,test.csv"]
    result = dlrm("train", "--data", f"csv:{data / 'train.csv'}", *split, *CONTEXT, *FAST, "--name", "ctx")
    assert result.exit_code == 0, result.output  # the latest: what the commands below use
    return store


@pytest.fixture(scope="module")
def model(store: Path):
    from dlrm_cli import load

    return load("ctx", store)


def _json(store: Path, *args: str) -> dict:
    result = Dlrm(store)(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _ratings(ranking) -> dict[str, float]:
    return {entry.item: entry.rating for entry in ranking.items}


def test_cli_predict_api_predict_and_api_score_give_the_same_numbers(store, model):
    given = {"channel": "app", "hour": 20}
    printed = _json(store, "predict", "--user", USER, "--items", ",".join(ITEMS), "--context", "channel=app,hour=20")
    assert printed["context"] == {"hour": 20.0, "channel": "app"} and printed["context_defaulted"] == []
    cli = {entry["item"]: entry["rating"] for entry in printed["items"]}
    api = _ratings(model.predict(USER, ITEMS, context=given))
    shared = model.score([USER] * 3, ITEMS, context=given).tolist()
    each = model.score([USER] * 3, ITEMS, context=[given, given, given]).tolist()
    for index, item in enumerate(ITEMS):
        assert api[item] == pytest.approx(cli[item], abs=1e-5)
        assert shared[index] == pytest.approx(cli[item], abs=1e-5)
        assert each[index] == pytest.approx(cli[item], abs=1e-5)


def test_changing_the_context_moves_the_prediction_the_way_the_data_does(model):
    for item in ITEMS:
        app, web = (model.score([USER], [item], context={"channel": c, "hour": 12})[0] for c in ("app", "web"))
        late, early = (model.score([USER], [item], context={"channel": "app", "hour": h})[0] for h in (22, 2))
        assert app - web > 0.5, (item, app, web)
        assert late > early, (item, late, early)


def test_a_value_never_seen_in_training_takes_the_row_of_unseen_values(store, model):
    kiosk = _ratings(model.predict(USER, ITEMS, context={"channel": "kiosk"}))
    tv = _ratings(model.predict(USER, ITEMS, context={"channel": "tv"}))
    app = _ratings(model.predict(USER, ITEMS, context={"channel": "app"}))
    assert kiosk == pytest.approx(tv, abs=1e-6)
    assert all(abs(kiosk[item] - app[item]) > 0.1 for item in ITEMS)
    result = Dlrm(store)("predict", "--user", USER, "--items", "i1", "--context", "channel=tv")
    assert result.exit_code == 0, result.output
    assert "channel=tv (never seen in training)" in result.stdout


def test_vocabularies_and_means_come_from_training_rows_only(model):
    table = model.loaded.catalog.context
    assert table.vocabularies == {"channel": ["app", "web"]}  # kiosk is only in the test rows
    assert 10 < table.defaults["hour"] < 14  # the test rows' hours (100 to 110) would pull it far up
    assert model.context_columns["hour"].kind == "numeric"
    assert model.context_columns["channel"].kind == "categorical"
    assert model.context_columns["channel"].default in ("app", "web")
    assert "context hour, channel" in repr(model)


def test_the_table_says_which_context_was_used_and_which_columns_took_their_default(store, model):
    mean = model.context_columns["hour"].default
    result = Dlrm(store)("predict", "--user", USER, "--items", "i1", "--context", "channel=web")
    assert result.exit_code == 0, result.output
    assert f"Context: hour={mean:g} (default: the training mean), channel=web\n" in result.stdout
    result = Dlrm(store)("recommend", "--user", USER, "--top", "2", "--context", "hour=7")
    assert result.exit_code == 0, result.output
    frequent = model.context_columns["channel"].default
    assert f"Context: hour=7, channel={frequent} (default: the most frequent training value)" in result.stdout
    printed = _json(store, "recommend", "--user", USER, "--top", "2", "--context", "hour=7")
    assert printed["context"] == {"hour": 7.0, "channel": frequent} and printed["context_defaulted"] == ["channel"]
    at_default = _ratings(model.predict(USER, ITEMS))
    assert at_default == pytest.approx(_ratings(model.predict(USER, ITEMS, context={"hour": mean})), abs=1e-6)


def test_recommend_all_users_scores_every_user_in_the_given_context(store, model, tmp_path):
    files = {}
    for channel in ("app", "web"):
        output = tmp_path / f"{channel}.csv"
        args = ["--all-users", "--top", "3", "--output", output, "--context", f"channel={channel},hour=18"]
        summary = _json(store, "recommend", *args)
        assert summary["context"] == {"hour": 18.0, "channel": channel} and summary["context_defaulted"] == []
        files[channel] = pd.read_csv(output, dtype={"user": str, "item": str})
    alone = model.recommend(USER, top=3, context={"channel": "web", "hour": 18}).ranking
    rows = files["web"][files["web"]["user"] == USER]
    assert list(rows["item"]) == [entry.item for entry in alone.items]
    assert list(rows["score"]) == pytest.approx([entry.rating for entry in alone.items], abs=1e-5)
    assert files["app"]["score"].mean() - files["web"]["score"].mean() > 0.5
    result = Dlrm(store)("recommend", "--all-users", "--output", tmp_path / "t.csv", "--context", "channel=app")
    assert result.exit_code == 0, result.output
    assert "Context: hour=" in result.stdout and "channel=app\n" in result.stdout


def test_contexts_of_several_values_are_scored_together(model):
    given = [{"channel": "app|web"}, {"channel": "app"}, {"channel": "web|kiosk"}]
    together = model.score([USER] * 3, ["i1"] * 3, context=given).tolist()
    alone = [float(model.score([USER], ["i1"], context=each)[0]) for each in given]
    assert together == pytest.approx(alone, abs=1e-5)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ("chanel=app", "unknown context column 'chanel' (this model's context columns: hour, channel)"),
        ("hour=late", "context column 'hour' is numeric, got \"late\""),
        ("hour", "--context takes COLUMN=VALUE pairs separated by commas, got 'hour'"),
        ("hour=1,hour=2", "--context names column 'hour' twice"),
    ],
)
def test_a_bad_context_is_one_line_and_exit_2(store, tmp_path, context, message):
    dlrm = Dlrm(store)
    assert_error(dlrm("predict", "--user", USER, "--items", "i1", "--context", context), 2, message)
    assert_error(dlrm("recommend", "--user", USER, "--context", context), 2, message)
    output = tmp_path / "r.csv"
    assert_error(dlrm("recommend", "--all-users", "--output", output, "--context", context), 2, message)
    assert not output.exists()


def test_the_api_refuses_a_bad_context_as_a_usage_error(model):
    with pytest.raises(DlrmUsageError, match="unknown context column 'day'"):
        model.predict(USER, ITEMS, context={"day": "monday"})
    with pytest.raises(DlrmUsageError, match="context column 'hour' is numeric"):
        model.recommend(USER, context={"hour": "noon"})
    with pytest.raises(DlrmUsageError, match="2 contexts for 3 pairs"):
        model.score([USER] * 3, ITEMS, context=[{}, {}])
    with pytest.raises(DlrmUsageError, match="takes a mapping"):
        model.predict(USER, ITEMS, context="channel=app")


def test_a_checkpoint_without_context_columns_predicts_and_refuses_a_context(store):
    from dlrm_cli import load

    dlrm = Dlrm(store)
    result = dlrm("predict", "--checkpoint", "plain", "--user", USER, "--items", "i1,i2")
    assert result.exit_code == 0, result.output
    assert "Context:" not in result.stdout
    assert "context" not in _json(store, "predict", "--checkpoint", "plain", "--user", USER, "--items", "i1")
    refused = "checkpoint plain has no context columns, so it takes no context (got 'channel')"
    assert_error(dlrm("predict", "--checkpoint", "plain", "--user", USER, "--items", "i1", "--context", "channel=app"),
                 2, refused)  # fmt: skip
    plain = load("plain", store)
    assert plain.context_columns == {} and ", context" not in repr(plain)
    with pytest.raises(DlrmUsageError, match="has no context columns"):
        plain.score([USER], ["i1"], context={"channel": "app"})
    assert len(plain.score([USER], ["i1"], context={})) == 1


def test_evaluate_gives_a_column_the_file_lacks_its_default(store, model, data, tmp_path):
    rows = pd.read_csv(data / "train.csv").head(300)
    mean = model.context_columns["hour"].default
    rows.drop(columns="hour").to_csv(tmp_path / "no-hour.csv", index=False)
    rows.assign(hour=mean).to_csv(tmp_path / "mean-hour.csv", index=False)
    rows.assign(hour=23.0).to_csv(tmp_path / "late.csv", index=False)
    figures = {
        name: _json(store, "evaluate", "--checkpoint", "ctx", "--data", f"csv:{tmp_path / name}.csv")["model"]["rmse"]
        for name in ("no-hour", "mean-hour", "late")
    }
    assert figures["no-hour"] == pytest.approx(figures["mean-hour"], abs=1e-5)
    assert abs(figures["no-hour"] - figures["late"]) > 0.01
