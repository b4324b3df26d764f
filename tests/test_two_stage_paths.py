"""A two-stage checkpoint, end to end: every path that recommends gives the same top items, and what a user can
get wrong about the stages gets one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import Dlrm, assert_error, snapshot
from fixtures import write_generic_csv
from test_serve import Server

COLUMNS = ["--user-col", "customer", "--item-col", "sku", "--rating-col", "stars", "--sparse-cols", "brand"]
USERS = ["c3", "c17", "c42"]
TOP = 5
TRAINED = ["--retrieve", "20"]  # candidates the ranker learns to order, of the 40 items


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Dlrm:
    folder = tmp_path_factory.mktemp("two_stage")
    data = write_generic_csv(folder / "shop.csv")
    dlrm = Dlrm(folder / "store")
    result = dlrm(
        "train", "--data", f"csv:{data}", *COLUMNS, "--epochs", "2", "--embedding-dim", "8", *TRAINED, "--name", "shop"
    )
    assert result.exit_code == 0, result.output
    assert "Two stages: validation NDCG@10" in result.output
    assert "ranker epoch 1/2: training pairs, folds drawn: 5/5" in result.output  # a long step shows progress
    return dlrm


def _top_of_evaluation(dlrm: Dlrm, users: list[str], top: int = TOP, retrieve: int | None = None) -> list[list[str]]:
    """The top items of each user in the order ``evaluate --k TOP [--retrieve N]`` ranks the test split by."""
    from dlrm_cli.data.sources import load_dataset
    from dlrm_cli.scoring.evaluation import split_stages
    from dlrm_cli.store.loading import open_model

    loaded = open_model(dlrm.store, "shop")
    stages = split_stages(loaded, load_dataset(loaded.checkpoint.run.data), "test", retrieve, top)
    rows, unknown = loaded.catalog.users.lookup(users)
    assert not unknown
    order = torch.argsort(stages.full_scores(rows), dim=1, descending=True, stable=True)[:, :top]
    keys = loaded.catalog.items.keys
    return [[str(keys[int(row)]) for row in ranked] for ranked in order]


@pytest.mark.slow
def test_every_path_recommends_the_same_top_items(shop, tmp_path):
    from dlrm_cli import load

    expected = _top_of_evaluation(shop, USERS)
    model = load("shop", store=shop.store)
    store = tmp_path / "store"
    shutil.copytree(shop.store, store)
    server = Server(store, "--checkpoint", "shop").wait_ready()
    try:
        for user, wanted in zip(USERS, expected, strict=True):
            printed = json.loads(shop("recommend", "--user", user, "--top", str(TOP), "--json").stdout)
            assert [e["item"] for e in printed["items"]] == wanted
            assert [e.item for e in model.recommend(user, top=TOP).ranking.items] == wanted
            response = server.post("/recommend", {"user": user, "top": TOP})
            assert response.status_code == 200, response.text
            served = response.json()["items"]
            assert [e["item"] for e in served] == wanted
            assert [e["score"] for e in served] == pytest.approx([e["score"] for e in printed["items"]], abs=1e-5)
        too_many = server.post("/recommend", {"user": USERS[0], "top": 25})
        assert too_many.status_code == 422 and "more than the 20 candidates" in too_many.json()["error"]
        assert server.post("/recommend", {"user": USERS[0], "top": 3}).status_code == 200  # still serving
    finally:
        assert server.stop() == 0


@pytest.fixture
def shop_copy(shop: Dlrm, tmp_path: Path) -> Dlrm:
    shutil.copytree(shop.store, tmp_path / "store")
    return Dlrm(tmp_path / "store")


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["recommend", "--user", "c3", "--retrieve", "0"], 2, "--retrieve"),
        (["evaluate", "--k", "10", "--retrieve", "-3"], 2, "--retrieve"),
        (["recommend", "--user", "c3", "--retrieve", "5", "--include-seen"], 2, "does not go with --include-seen"),
        (["train", "--retrieve", "0"], 2, "--retrieve"),
        (["train", "--retrieval", "two-tower"], 2, "--retrieval"),
        (["evaluate", "--retrieve", "5"], 2, "--retrieve goes with --k"),
    ],
)
def test_bad_counts_of_candidates_get_one_line(shop_copy, args, code, message):
    before = snapshot(shop_copy.store)
    assert_error(shop_copy(*args), code, message)
    assert snapshot(shop_copy.store) == before


def test_retrieve_on_a_one_stage_checkpoint_is_refused(trained):
    assert_error(trained("recommend", "--user", "42", "--retrieve", "20"), 2, "--retrieve needs a two-stage checkpoint")
    assert_error(trained("evaluate", "--k", "5", "--retrieve", "20"), 2, "--retrieve needs a two-stage checkpoint")


def test_more_items_than_candidates_widens_the_retrieval_up_to_what_the_ranker_learned(shop_copy):
    printed = json.loads(shop_copy("recommend", "--user", "c3", "--top", "12", "--retrieve", "4", "--json").stdout)
    assert [e["item"] for e in printed["items"]] == _top_of_evaluation(shop_copy, ["c3"], 12, 4)[0]  # evaluate too
    assert_error(shop_copy("recommend", "--user", "c3", "--top", "25"), 2, "top 25 is more than the 20 candidates")
    assert_error(shop_copy("recommend", "--user", "c3", "--retrieve", "30"), 2, "--retrieve 30 is more than the 20")
    assert_error(
        shop_copy("recommend", "--all-users", "--top", "25", "--output", shop_copy.store / "r.csv"), 2, "top 25"
    )
    assert_error(shop_copy("evaluate", "--k", "10", "--retrieve", "30"), 2, "--retrieve 30 is more than the 20")
    whole = json.loads(shop_copy("recommend", "--user", "c3", "--top", "25", "--include-seen", "--json").stdout)
    assert len(whole["items"]) == 25  # the main model ranks every item


@pytest.mark.parametrize("stage", ["ranker.pt", "retrieval.pt"])
@pytest.mark.parametrize("damage", ["missing", "garbled"])
def test_a_missing_or_damaged_stage_gets_one_line_and_changes_nothing(shop_copy, stage, damage):
    path = shop_copy.store / "shop" / stage
    assert path.exists()
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"not a tensor file" * 10)
    before = snapshot(shop_copy.store)
    for args in (
        ["recommend", "--user", "c3"],
        ["evaluate", "--k", "5"],
        ["predict", "--user", "c3", "--items", "sku-1"],
    ):
        result = shop_copy(*args, "--checkpoint", "shop")
        assert_error(result, 1, "shop")
        assert "corrupt" in result.stderr or "missing" in result.stderr, result.stderr
    assert snapshot(shop_copy.store) == before


def test_a_stage_record_without_its_parts_gets_one_line(shop_copy):
    meta_path = shop_copy.store / "shop" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["stages"]["ranker"]
    meta_path.write_text(json.dumps(meta))
    result = shop_copy("recommend", "--user", "c3", "--checkpoint", "shop")
    assert_error(result, 1, "shop")


def test_export_of_a_two_stage_checkpoint_says_what_the_artifact_holds(shop_copy, tmp_path):
    output = tmp_path / "shop.pt2"
    result = shop_copy("export", "--checkpoint", "shop", "--output", output)
    assert result.exit_code == 0, result.output
    assert "Not in the artifact: the retrieval stage and the ranker" in result.stdout
    note = json.loads(output.with_name("shop.pt2.json").read_text())["two_stages"]
    assert "EASE proposes 20 candidates" in note and "holds the main model alone" in note


def test_every_user_gets_what_there_is_when_fewer_items_are_left_than_asked_for(shop_copy, tmp_path):
    output = tmp_path / "all.csv"
    result = shop_copy("recommend", "--all-users", "--top", "20", "--output", output)
    assert result.exit_code == 0, result.output
    rows = output.read_text().splitlines()[1:]
    per_user: dict[str, int] = {}
    for row in rows:
        per_user[row.split(",")[0]] = per_user.get(row.split(",")[0], 0) + 1
    assert max(per_user.values()) == 20 and min(per_user.values()) < 20  # some users know all but a few
