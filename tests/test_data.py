"""Real data: each format, splits without leakage, vocabularies, the parse cache, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_error, snapshot
from fixtures import write_generic_csv, write_ml1m, write_ml100k, write_ml_latest

from dlrm_cli.config import CsvColumns, SyntheticSpec
from dlrm_cli.data.features import split_rows
from dlrm_cli.data.readers import read_movielens
from dlrm_cli.data.sources import load_dataset, load_raw, parse_data_option
from dlrm_cli.data.synthetic import draw, expected_clipped, generate
from dlrm_cli.errors import DataError, DlrmUsageError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-1m-subset"
FAST = ["--epochs", "1", "--embedding-dim", "8", "--batch-size", "256"]
CSV_COLUMNS = [
    "--user-col", "customer", "--item-col", "sku", "--rating-col", "stars",
    "--dense-cols", "price", "--sparse-cols", "brand,tags,region", "--time-col", "when",
]  # fmt: skip


@pytest.mark.parametrize(
    ("writer", "sparse", "title"),
    [
        (write_ml100k, ["user_id", "item_id", "gender", "age", "occupation", "zip3", "genres"], "Movie 1 (1981)"),
        (write_ml1m, ["user_id", "item_id", "gender", "age", "occupation", "zip3", "genres"], "Film 1 (1991)"),
        (write_ml_latest, ["user_id", "item_id", "genres"], "Movie, The 1 (2001)"),
    ],
)
def test_movielens_releases_train_and_predict_with_titles(dlrm, tmp_path, writer, sparse, title):
    folder = writer(tmp_path / "ml")
    result = dlrm("train", "--data", f"movielens:{folder}", "--name", "ml", *FAST)
    assert result.exit_code == 0, result.output
    meta = json.loads((dlrm.store / "ml" / "meta.json").read_text())
    assert meta["features"]["sparse"] == [*sparse, "rated_items", "raters"]  # and the implicit-feedback bags
    assert meta["run"]["data"]["split"] == "random:0.1"
    result = dlrm("predict", "--user", "3", "--items", "1,2", "--json")
    assert result.exit_code == 0, result.output
    titles = {entry["item"]: entry["title"] for entry in json.loads(result.stdout)["items"]}
    assert titles["1"] == title
    evaluation = json.loads(dlrm("evaluate", "--json").stdout)
    assert evaluation["count"] == 150 and evaluation["noise_floor"] is None


def test_ml1m_reads_latin1_titles_and_genres(tmp_path):
    raw = read_movielens(write_ml1m(tmp_path / "ml"))
    assert raw.release == "ml-1m" and raw.rating_range == (1.0, 5.0)
    assert "Café 5 (1995)" in raw.items.titles.tolist()
    assert raw.items.sparse["genres"][0] == "Comedy|Romance"
    assert raw.items.dense["release_year"][0] == 1991


def test_half_star_release_declares_half_star_range(tmp_path):
    raw = read_movielens(write_ml_latest(tmp_path / "ml"))
    assert raw.rating_range == (0.5, 5.0)
    assert set(np.unique(raw.rating) * 2 % 2) <= {0, 1}


def test_generic_csv_with_string_ids_and_side_columns(dlrm, tmp_path):
    path = write_generic_csv(tmp_path / "shop.csv")
    result = dlrm("train", "--data", f"csv:{path}", *CSV_COLUMNS, "--name", "shop", *FAST)
    assert result.exit_code == 0, result.output
    meta = json.loads((dlrm.store / "shop" / "meta.json").read_text())
    assert meta["features"]["sparse"] == ["user_id", "item_id", "region", "brand", "tags", "rated_items", "raters"]
    assert meta["features"]["dense"] == ["user_log_ratings", "item_log_ratings", "item_price"]
    result = dlrm("predict", "--user", "c3", "--items", "sku-1,sku-2,sku-new", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {e["item"]: e["unseen_in_training"] for e in doc["items"]}["sku-new"] is True
    assert dlrm("evaluate", "--data", f"csv:{path}").exit_code == 0


def test_csv_column_that_describes_neither_user_nor_item_is_a_context_column(dlrm, tmp_path):
    path = write_generic_csv(tmp_path / "shop.csv")
    args = ["--user-col", "customer", "--item-col", "sku", "--rating-col", "stars", "--dense-cols", "when"]
    result = dlrm("train", "--data", f"csv:{path}", *args, *FAST)
    assert result.exit_code == 0, result.output
    assert "Context columns (a value per rating, not per user or item): when" in result.output


def test_random_split_is_seeded_and_disjoint(tmp_path):
    raw = read_movielens(write_ml1m(tmp_path / "ml"))
    rows = split_rows(raw, "random:0.1", seed=0, validation=0.1)
    again = split_rows(raw, "random:0.1", seed=0, validation=0.1)
    other = split_rows(raw, "random:0.1", seed=1, validation=0.1)
    assert all(np.array_equal(rows[k], again[k]) for k in rows)
    assert not np.array_equal(rows["test"], other["test"])
    together = np.concatenate(list(rows.values()))
    assert len(together) == len(np.unique(together)) == len(raw)
    assert len(rows["test"]) == 150 and len(rows["validation"]) == 135


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared MovieLens subset not present")
def test_random_split_matches_the_agreed_ml1m_subset_test_rows():
    raw = read_movielens(SHARED)
    rows = split_rows(raw, "random:0.1", seed=0, validation=0.05)
    n = len(raw)
    agreed = np.sort(np.random.default_rng(0).permutation(n)[: n // 10])
    assert n == 487_650
    assert np.array_equal(rows["test"], agreed)
    assert not np.isin(rows["validation"], agreed).any()


def test_temporal_split_holds_out_each_users_latest(tmp_path):
    raw = read_movielens(write_ml1m(tmp_path / "ml"))
    rows = split_rows(raw, "temporal:0.2", seed=0, validation=0.1)
    for user in np.unique(raw.user):
        train_times = raw.time[rows["train"]][raw.user[rows["train"]] == user]
        test_times = raw.time[rows["test"]][raw.user[rows["test"]] == user]
        if len(test_times) and len(train_times):
            assert train_times.max() <= test_times.min()


def test_files_split_uses_the_release_files(dlrm, tmp_path):
    folder = write_ml100k(tmp_path / "ml")
    result = dlrm("train", "--data", f"movielens:{folder}", "--split", "files:u1.base,u1.test", "--name", "f", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads(dlrm("evaluate", "--json").stdout)
    assert report["count"] == 300


def test_vocabularies_and_normalisation_come_from_training_rows_only(tmp_path):
    folder = write_ml1m(tmp_path / "ml")
    source = parse_data_option(f"movielens:{folder}", split="random:0.1", seed=0, validation=0.1)
    data = load_dataset(source)
    items = data.catalog.items
    train_items = set(data.train.item.tolist())
    for row in range(len(items.keys)):
        assert (items.id_rows[row] > 0) == (row in train_items)
    # Every item only in held-out rows shares the out-of-vocabulary row 0.
    held_out_only = set(data.test.item.tolist()) - train_items
    assert all(int(items.id_rows[row]) == 0 for row in held_out_only)
    # Normalised with training entities' statistics: mean 0 over the entities seen in training.
    seen = items.id_rows[:-1] > 0
    assert abs(float(items.dense[:-1][seen, 0].mean())) < 1e-5


def test_parsed_data_is_cached_by_file_contents(tmp_path):
    from dlrm_cli.data import cache

    folder = write_ml1m(tmp_path / "ml")
    source = parse_data_option(f"movielens:{folder}")
    first, key = load_raw(source)
    calls = []
    raw, hit = cache.cached(key, lambda: calls.append(1))
    assert hit and not calls
    assert np.array_equal(raw.rating, first.rating) and np.array_equal(raw.items.titles, first.items.titles)
    with (folder / "ratings.dat").open("a") as handle:
        handle.write("1::2::3::4\n")
    _, new_key = load_raw(source)
    assert new_key != key


def test_evaluate_refuses_data_changed_since_training(dlrm, tmp_path):
    folder = write_ml1m(tmp_path / "ml")
    assert dlrm("train", "--data", f"movielens:{folder}", *FAST).exit_code == 0
    with (folder / "ratings.dat").open("a") as handle:
        handle.write("1::2::3::4\n")
    assert_error(dlrm("evaluate"), 1, "has changed since this checkpoint was trained")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda f: f.write_text("1::2::3::4\n1::2::x::5\n"), "ratings.dat: line 2: rating is 'x', not a finite number"),
        (lambda f: f.write_text("1::2::3::4\n1::2::3::4::9\n"), "ratings.dat: line 2: expected 4 fields, found 5"),
        (lambda f: f.write_text("1::2::3::4\n1::2::nan::5\n"), "line 2: rating is 'nan', not a finite number"),
        (lambda f: f.write_text("1::2::3::4\n1::2::inf::5\n"), "line 2: rating is 'inf', not a finite number"),
        (lambda f: f.write_text("1::2::3::4\n\n1::2::7::5\n"), "line 3: rating 7 is outside the declared range 1 to 5"),
        (lambda f: f.write_text(""), "ratings.dat is empty"),
        (lambda f: f.write_text("1\t2\t3\t4\n"), "expected fields separated by '::', found tabs"),
    ],
)
def test_bad_ratings_files_name_file_and_line(dlrm, tmp_path, corrupt, message):
    folder = write_ml1m(tmp_path / "ml")
    corrupt(folder / "ratings.dat")
    before = snapshot(dlrm.store)
    assert_error(dlrm("train", "--data", f"movielens:{folder}", *FAST), 1, message)
    assert snapshot(dlrm.store) == before


def test_bad_csv_input(dlrm, tmp_path):
    path = write_generic_csv(tmp_path / "shop.csv")
    base = ["--user-col", "customer", "--item-col", "sku"]
    assert_error(
        dlrm("train", "--data", f"csv:{path}", *base, "--rating-col", "score", *FAST),
        1,
        "shop.csv: no column named 'score'",
    )
    assert_error(
        dlrm("train", "--data", f"csv:{path}", *base, "--rating-col", "stars", "--rating-range", "1,4", *FAST),
        1,
        "is outside the declared range 1 to 4",
    )
    assert_error(dlrm("train", "--data", f"csv:{tmp_path}", *FAST), 1, "is a folder; give the file")
    assert_error(dlrm("train", "--data", f"csv:{tmp_path / 'none.csv'}", *FAST), 1, "none.csv does not exist")
    assert_error(dlrm("train", "--data", "csv:", *FAST), 2, "--data csv: needs a path")
    assert_error(dlrm("train", "--rating-range", "5,1", *FAST), 2, "--rating-range must have LOW below HIGH")
    assert_error(dlrm("train", "--user-col", "u", *FAST), 2, "apply only to --data csv:FILE")


def test_folder_without_movielens_files(dlrm, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_error(dlrm("train", "--data", f"movielens:{tmp_path / 'empty'}", *FAST), 1, "holds no MovieLens ratings")
    assert_error(dlrm("train", "--data", f"movielens:{tmp_path / 'nope'}", *FAST), 1, "nope does not exist")


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ("random:2", "--split fraction must be between 0 and 1, got 2"),
        ("random:x", "needs a test fraction"),
        ("files:a", "needs two files, TRAIN,TEST"),
        ("weird:1", "--split must be random:FRACTION"),
    ],
)
def test_bad_split_option(dlrm, tmp_path, split, message):
    folder = write_ml1m(tmp_path / "ml")
    assert_error(dlrm("train", "--data", f"movielens:{folder}", "--split", split, *FAST), 2, message)


def test_missing_split_file(dlrm, tmp_path):
    folder = write_ml100k(tmp_path / "ml")
    assert_error(
        dlrm("train", "--data", f"movielens:{folder}", "--split", "files:u1.base,u9.test", *FAST), 1, "does not exist"
    )


def test_temporal_split_needs_timestamps(tmp_path):
    path = write_generic_csv(tmp_path / "shop.csv")
    columns = CsvColumns(user="customer", item="sku", rating="stars")
    source = parse_data_option(f"csv:{path}", split="temporal:0.1", columns=columns)
    with pytest.raises(DlrmUsageError, match="--split temporal needs timestamps"):
        load_dataset(source)


def test_unreadable_cache_entry_is_parsed_again(tmp_path):
    folder = write_ml1m(tmp_path / "ml")
    source = parse_data_option(f"movielens:{folder}")
    _, key = load_raw(source)
    from dlrm_cli.data.cache import cache_dir

    [entry] = list(cache_dir().glob(f"{key}*.npz"))
    entry.write_bytes(b"garbage")
    raw, _ = load_raw(source)
    assert len(raw) == 1500


def test_data_error_is_a_runtime_error():
    assert DataError.exit_code == 1


@pytest.mark.parametrize(
    ("writer", "file", "text", "message"),
    [
        (write_ml100k, "u.data", "1\t2\t3\t4\n1\t2\tx\t4\n", "u.data: line 2: rating is 'x', not a finite number"),
        (write_ml100k, "u.data", "1\t2\t3\t4\n1\t2\t9\t4\n", "line 2: rating 9 is outside the declared range 1 to 5"),
        (write_ml_latest, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,4\n1,2,abc,4\n",
         "ratings.csv: line 3: rating is 'abc', not a finite number"),
        (write_ml_latest, "ratings.csv", "userId,movieId,timestamp\n1,2,4\n", "ratings.csv: no column named 'rating'"),
        (write_ml_latest, "ratings.csv", "userId,movieId,rating,timestamp\n", "has a header but no rows"),
    ],
)  # fmt: skip
def test_bad_rows_in_other_releases(dlrm, tmp_path, writer, file, text, message):
    folder = writer(tmp_path / "ml")
    (folder / file).write_text(text)
    assert_error(dlrm("train", "--data", f"movielens:{folder}", *FAST), 1, message)


def test_split_seed_keeps_the_split_while_seed_changes_the_model(dlrm, tmp_path):
    folder = write_ml1m(tmp_path / "ml")
    for name, seeds in (("a", ["--seed", "0"]), ("b", ["--seed", "3", "--split-seed", "0"])):
        result = dlrm("train", "--data", f"movielens:{folder}", "--name", name, *seeds, *FAST)
        assert result.exit_code == 0, result.output
    a, b = (json.loads((dlrm.store / name / "meta.json").read_text())["run"] for name in ("a", "b"))
    assert (a["data"]["seed"], b["data"]["seed"], b["train"]["seed"]) == (0, 0, 3)
    assert a["data"] == b["data"]  # the same split, so the same test rows: runs that differ only in the model
    printed = dlrm("train", "--data", f"movielens:{folder}", "--seed", "3", "--split-seed", "0", "--print-config")
    assert "seed = 3\n" in printed.stdout and "split-seed = 0\n" in printed.stdout


def test_split_seed_keeps_the_built_in_data_while_seed_changes_the_model(dlrm):
    sizes = ["--users", "60", "--items", "40", "--ratings", "3000", "--epochs", "1"]
    for name, seeds in (("a", ["--seed", "0"]), ("b", ["--seed", "3", "--split-seed", "0"]), ("c", ["--seed", "3"])):
        result = dlrm("train", "--name", name, *seeds, *sizes)
        assert result.exit_code == 0, result.output
    a, b, c = (json.loads((dlrm.store / name / "meta.json").read_text()) for name in ("a", "b", "c"))
    assert a["run"]["data"] == b["run"]["data"] != c["run"]["data"]  # b: a's ratings, c's model seed
    assert b["run"]["train"]["seed"] == c["run"]["train"]["seed"] == 3
    assert a["metrics"]["validation"]["rmse"] != b["metrics"]["validation"]["rmse"]  # another model
    printed = dlrm("train", "--seed", "3", "--split-seed", "0", "--print-config")
    assert "seed = 3\n" in printed.stdout and "split-seed = 0\n" in printed.stdout


def test_synthetic_truth_is_what_the_built_in_ratings_are_drawn_from():
    """benchmarks/synthetic_floor.py samples the posterior of the generator's hidden parameters: they must be
    the ones the ratings come from, and the splits the ones dlrm trains and validates on."""
    spec = SyntheticSpec(users=300, items=200, ratings=30_000, seed=3)
    draws, dataset = draw(spec), generate(spec)
    splits = draws.splits(spec)
    for name in ("train", "validation", "test"):
        rows = splits[name]
        part = dataset.split(name)
        assert part.user.tolist() == draws.truth.user[rows].tolist()
        assert part.item.tolist() == draws.truth.item[rows].tolist()
        assert np.allclose(part.rating.numpy(), draws.rating[rows], atol=1e-6)
        expected = expected_clipped(draws.truth.mean[rows], spec.noise, 0.0, 5.0)
        assert np.allclose(dataset.expected[name].numpy(), expected, atol=1e-5)
    inside = (draws.rating > 0) & (draws.rating < 5)  # unclipped: rating - mean is the noise alone
    assert np.std(draws.rating[inside] - draws.truth.mean[inside]) == pytest.approx(spec.noise, rel=0.05)


def test_a_files_split_reads_a_context_column_as_such_in_both_files(tmp_path):
    """The test file is small enough that its channel happens to be constant per user; the training file's
    rows show that channel describes the ratings, so it is a context column in both."""
    header = "user,item,rating,channel\n"
    train_rows = [f"u{u},i{i},{1 + (u + i) % 5},{'web' if (u + i) % 2 else 'app'}" for u in range(6) for i in range(6)]
    (tmp_path / "train.csv").write_text(header + "\n".join(train_rows) + "\n")
    (tmp_path / "test.csv").write_text(header + "u1,i2,3,web\nu2,i3,4,app\n")
    source = parse_data_option(
        f"csv:{tmp_path / 'train.csv'}", split="files:train.csv,test.csv", columns=CsvColumns(sparse=("channel",))
    )
    dataset = load_dataset(source)
    assert dataset.catalog.context is not None and dataset.catalog.context.names == ["channel"]
    assert not dataset.catalog.users.sparse and not dataset.catalog.items.sparse
    app = 1 + dataset.catalog.context.vocabularies["channel"].index("app")
    web = 1 + dataset.catalog.context.vocabularies["channel"].index("web")
    assert dataset.test.context.sparse["channel"][:, 0].tolist() == [web, app]
