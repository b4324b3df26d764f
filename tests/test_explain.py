"""Readable answers: items shown with their titles and side values (``--title-col``), and ``recommend --explain``
naming the user's own training items behind each recommendation, on the command line, in Python and over HTTP."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import Dlrm, assert_error
from fixtures import write_generic_csv

COLUMNS = ["--user-col", "customer", "--item-col", "sku", "--rating-col", "stars"]
SIDE = ["--dense-cols", "price", "--sparse-cols", "brand", "--title-col", "name"]
TRAIN = ["--epochs", "1", "--embedding-dim", "8"]
CHECKPOINTS = ("ease", "flat")  # two stages (EASE's item-item weights) and one (item embeddings)
USERS = ["c3", "c17", "c42"]


def write_titled_csv(path: Path) -> Path:
    """The generic shop CSV with a ``name`` column, constant per item; sku-40's rows leave it blank."""
    write_generic_csv(path)
    lines = path.read_text().splitlines()
    rows = [lines[0] + ",name"]
    for line in lines[1:]:
        number = line.split(",")[1].removeprefix("sku-")
        rows.append(f"{line},{'' if number == '40' else f'Product {number}'}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Dlrm:
    """Two checkpoints of the titled CSV; the data is removed afterwards, so titles must travel in them."""
    folder = tmp_path_factory.mktemp("explain")
    data = write_titled_csv(folder / "shop.csv")
    dlrm = Dlrm(folder / "store")
    for name, retrieval in zip(CHECKPOINTS, ("ease", "none"), strict=True):
        result = dlrm(
            "train", "--data", f"csv:{data}", *COLUMNS, *SIDE, *TRAIN, "--retrieval", retrieval, "--name", name
        )
        assert result.exit_code == 0, result.output
    data.unlink()
    return dlrm


def seen_items(store: Path, checkpoint: str, user: str) -> set[str]:
    """The items ``user`` rated in the data the checkpoint was trained on, as ids: its training rows, and for a
    two-stage checkpoint the validation rows its retrieval stage was refitted with too."""
    from dlrm_cli.store.loading import open_model

    loaded = open_model(store, checkpoint)
    row = int(loaded.catalog.users.lookup([user])[0][0])
    known = loaded.stages.history if loaded.stages is not None else loaded.known.seen
    return {str(loaded.catalog.items.keys[item]) for item in known.of(row).tolist()}


def recommended(dlrm: Dlrm, *args: str) -> dict:
    result = dlrm("recommend", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_title_and_side_values_show_in_predict_and_recommend(shop):
    result = shop("predict", "--checkpoint", "flat", "--user", "c3", "--items", "sku-2,sku-40")
    assert result.exit_code == 0, result.output
    assert "Product 2 (price 13, brand initech)" in result.stdout
    assert "item sku-40 (price 70, brand globex)" in result.stdout  # no title: its id, with its side values
    predicted = json.loads(shop("predict", "-c", "flat", "--user", "c3", "--items", "sku-2,sku-40", "--json").stdout)
    by_item = {entry["item"]: entry for entry in predicted["items"]}
    assert by_item["sku-2"]["title"] == "Product 2"
    assert by_item["sku-2"]["features"] == {"price": pytest.approx(13.0), "brand": "initech"}
    assert by_item["sku-40"]["title"] is None
    for entry in recommended(shop, "--checkpoint", "ease", "--user", "c3", "--top", "3")["items"]:
        assert entry["title"] == f"Product {entry['item'].removeprefix('sku-')}" or entry["item"] == "sku-40"
        assert set(entry["features"]) == {"price", "brand"}
        assert "because" not in entry  # only with --explain
    table = shop("recommend", "--checkpoint", "ease", "--user", "c3", "--top", "3")
    assert table.exit_code == 0 and "Product " in table.stdout and "because you rated" not in table.stdout


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_explain_names_only_items_the_user_rated_in_training(shop, checkpoint):
    for user in USERS:
        seen = seen_items(shop.store, checkpoint, user)
        for exclude in ("--exclude-seen", "--include-seen"):
            answer = recommended(shop, "-c", checkpoint, "--user", user, "--top", "5", "--explain", exclude)
            named = 0
            for entry in answer["items"]:
                reasons = entry["because"]
                assert len(reasons) <= 3
                assert {reason["item"] for reason in reasons} <= seen - {entry["item"]}  # never the item itself
                weights = [reason["weight"] for reason in reasons]
                assert weights == sorted(weights, reverse=True) and all(weight > 0 for weight in weights)
                named += len(reasons)
            assert named > 0, answer


def test_explain_json_and_table_shape(shop):
    answer = recommended(shop, "-c", "ease", "--user", "c17", "--top", "2", "--explain")
    reason = answer["items"][0]["because"][0]
    assert set(reason) == {"item", "title", "weight"} and reason["title"].startswith("Product ")
    assert isinstance(reason["weight"], float)
    table = shop("recommend", "-c", "ease", "--user", "c17", "--top", "2", "--explain")
    assert table.exit_code == 0, table.output
    assert "because you rated" in table.stdout and f"{reason['title']} ({reason['weight']:.2f})" in table.stdout


def test_a_user_without_training_items_gets_no_reasons_and_no_error(shop):
    for checkpoint in CHECKPOINTS:
        answer = recommended(shop, "-c", checkpoint, "--user", "stranger", "--top", "3", "--explain")
        assert answer["user_unseen_in_training"] and [entry["because"] for entry in answer["items"]] == [[]] * 3


def test_explain_is_refused_for_many_users(shop, tmp_path):
    result = shop("recommend", "-c", "flat", "--all-users", "--output", tmp_path / "recs.csv", "--explain")
    assert_error(result, 2, "--explain goes with --user")
    assert not (tmp_path / "recs.csv").exists()


def test_the_api_explains_as_the_command_does(shop):
    from dlrm_cli import load

    model = load("ease", store=shop.store)
    plain = model.recommend("c42", top=3)
    assert all(entry.because is None for entry in plain.ranking.items)
    explained = model.recommend("c42", top=3, explain=True).to_dict()
    command = recommended(shop, "-c", "ease", "--user", "c42", "--top", "3", "--explain")
    assert [entry["because"] for entry in explained["items"]] == [entry["because"] for entry in command["items"]]
    assert model.explain(plain.ranking).to_dict()["items"] == explained["items"]


def test_svd_and_ease_weights_are_the_generators_item_item_weights(shop):
    from dlrm_cli.retrieval.generators import PureSvd
    from dlrm_cli.scoring.explain import item_weights
    from dlrm_cli.store.loading import open_model

    loaded = open_model(shop.store, "ease")
    rows, seen = torch.tensor([1, 5, 9]), torch.tensor([2, 3, 7, 20])
    ease = loaded.stages.generator.weights
    assert torch.allclose(item_weights(loaded, rows, seen), ease[seen][:, rows].T)
    factors = torch.randn(ease.shape[0], 4)
    loaded.stages = replace(loaded.stages, generator=PureSvd(factors))
    assert torch.allclose(item_weights(loaded, rows, seen), factors[rows] @ factors[seen].T, atol=1e-6)


def test_a_checkpoint_without_titles_loads_and_shows_ids(tmp_path):
    """A checkpoint written before titles and side values were kept (format 4) shows its ids and still explains."""
    from test_store import format4_store

    dlrm = format4_store(tmp_path)
    table = dlrm("recommend", "--checkpoint", "format4", "--user", "c1", "--explain")
    assert table.exit_code == 0, table.output
    assert "sku-5" in table.stdout and "title" not in table.stdout and "because you rated" in table.stdout
    answer = recommended(dlrm, "--checkpoint", "format4", "--user", "c1", "--explain")
    assert all(entry["title"] is None and "features" not in entry for entry in answer["items"])
    seen = seen_items(dlrm.store, "format4", "c1")
    assert all({reason["item"] for reason in entry["because"]} <= seen for entry in answer["items"])


def test_a_title_column_must_name_one_title_per_item(dlrm, tmp_path):
    data = write_titled_csv(tmp_path / "shop.csv")
    lines = data.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if ",sku-7," in line)
    lines[at] = lines[at].replace("Product 7", "Another name")
    data.write_text("\n".join(lines) + "\n")
    result = dlrm("train", "--data", f"csv:{data}", *COLUMNS, "--title-col", "name", *TRAIN)
    assert_error(result, 1, "column 'name' (--title-col) varies within item sku-7")
    missing = dlrm("train", "--data", f"csv:{data}", *COLUMNS, "--title-col", "label", *TRAIN)
    assert_error(missing, 1, "no column named 'label'")


@pytest.mark.slow
def test_serve_shows_titles_and_explains(shop, tmp_path):
    from test_serve import Server

    store = tmp_path / "store"
    shutil.copytree(shop.store, store)
    server = Server(store, "--checkpoint", "ease").wait_ready()
    try:
        answer = server.post("/recommend", {"user": "c3", "top": 3, "explain": True})
        assert answer.status_code == 200, answer.text
        command = recommended(shop, "-c", "ease", "--user", "c3", "--top", "3", "--explain")
        for served, shown in zip(answer.json()["items"], command["items"], strict=True):
            assert served["title"] == shown["title"] and served["features"] == shown["features"]
            assert served["because"] == shown["because"]
        plain = server.post("/recommend", {"user": "c3", "top": 3}).json()
        assert all("because" not in entry for entry in plain["items"])
        predicted = server.post("/predict", {"user": "c3", "items": ["sku-2"]}).json()
        assert predicted["items"][0]["title"] == "Product 2"
        refused = server.post("/recommend", {"user": "c3", "explain": "yes"})
        assert refused.status_code == 422 and "explain" in refused.text
    finally:
        assert server.stop() == 0


def test_movielens_items_show_their_titles_and_genres(dlrm, tmp_path):
    from fixtures import write_ml1m

    data = write_ml1m(tmp_path / "ml-1m")
    trained = dlrm("train", "--data", f"movielens:{data}", *TRAIN, "--retrieval", "none", "--name", "ml")
    assert trained.exit_code == 0, trained.output
    result = dlrm("predict", "-c", "ml", "--user", "3", "--items", "5", "--json")
    assert result.exit_code == 0, result.output
    item = json.loads(result.stdout)["items"][0]
    assert item["title"] == "Café 5 (1995)"
    assert item["features"] == {"genres": "Action|Action"}  # the year is in the title: not repeated


def test_titles_are_shown_as_written_not_as_markup(dlrm, tmp_path: Path):
    names = ["Plain", "[new] Widget", "[/x] Odd", "Plain too"]  # Rich would read the first two as markup
    rows = ["customer,sku,stars,name"]
    rows += [f"c{user},sku-{item},{1 + (user * item) % 5},{names[item]}" for user in range(12) for item in range(4)]
    data = tmp_path / "brackets.csv"
    data.write_text("\n".join(rows) + "\n")
    trained = dlrm("train", "--data", f"csv:{data}", *COLUMNS, "--title-col", "name", *TRAIN, "--retrieval", "none")
    assert trained.exit_code == 0, trained.output
    result = dlrm("predict", "--user", "c1", "--items", "sku-1,sku-2")
    assert result.exit_code == 0, result.output
    assert "[new] Widget" in result.stdout and "[/x] Odd" in result.stdout
