"""A checkpoint travels without its data: predict, recommend, recommend --all-users, serve, export and the API
answer from the checkpoint alone, with the same answers as beside the data; only evaluate reads the data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import Dlrm, assert_error, snapshot
from fixtures import write_generic_csv
from test_serve import Server

COLUMNS = ["--user-col", "customer", "--item-col", "sku", "--rating-col", "stars", "--sparse-cols", "brand"]
ONE_STAGE = ["--epochs", "1", "--embedding-dim", "8", "--retrieval", "none"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dlrm, Path]:
    """A one-stage checkpoint ``shop`` trained on a CSV file, and that file."""
    folder = tmp_path_factory.mktemp("travel")
    data = write_generic_csv(folder / "data" / "shop.csv")
    dlrm = Dlrm(folder / "store")
    result = dlrm("train", "--data", f"csv:{data}", *COLUMNS, *ONE_STAGE, "--name", "shop")
    assert result.exit_code == 0, result.output
    return dlrm, data


@pytest.fixture
def moved(shop: tuple[Dlrm, Path], tmp_path: Path) -> tuple[Dlrm, Path]:
    """A copy of the store whose training data has been moved away, and where the data was."""
    dlrm, data = shop
    store = tmp_path / "store"
    shutil.copytree(dlrm.store, store)
    copy = tmp_path / "data" / "shop.csv"
    copy.parent.mkdir()
    shutil.copy(data, copy)
    meta_path = store / "shop" / "meta.json"  # point the record at the private copy, then move the copy away
    meta = json.loads(meta_path.read_text())
    _rewrite(meta_path, {**meta, "run": {**meta["run"], "data": {**meta["run"]["data"], "path": str(copy)}}})
    copy.rename(tmp_path / "elsewhere.csv")
    return Dlrm(store), copy


def _rewrite(meta_path: Path, meta: dict) -> None:
    """Write a record as a tool would, its digest made anew so that only the change itself shows."""
    from dlrm_cli.store.checkpoints import _meta_digest

    meta = {key: value for key, value in meta.items() if key != "meta_sha256"}
    meta["meta_sha256"] = _meta_digest(meta)
    meta_path.write_text(json.dumps(meta, indent=2))


def _answers(dlrm: Dlrm, output: Path) -> dict:
    predicted = dlrm("predict", "--user", "c3", "--items", "sku-1,sku-2,sku-7", "--json")
    recommended = dlrm("recommend", "--user", "c3", "--top", "5", "--json")
    many = dlrm("recommend", "--all-users", "--top", "3", "--output", output)
    for result in (predicted, recommended, many):
        assert result.exit_code == 0, result.output
    return {
        "predict": [(e["item"], e["rating"]) for e in json.loads(predicted.stdout)["items"]],
        "recommend": [(e["item"], e["rating"]) for e in json.loads(recommended.stdout)["items"]],
        "all": output.read_text(),
    }


@pytest.mark.slow
def test_every_answer_is_the_same_without_the_data(shop, moved, tmp_path):
    from dlrm_cli import load

    beside = _answers(shop[0], tmp_path / "beside.csv")
    dlrm, _ = moved
    assert _answers(dlrm, tmp_path / "away.csv") == beside
    model = load("shop", store=dlrm.store)
    answered = model.recommend("c3", top=5).ranking.items
    assert [e.item for e in answered] == [item for item, _ in beside["recommend"]]
    assert [e.rating for e in answered] == pytest.approx([rating for _, rating in beside["recommend"]], abs=1e-5)
    result = dlrm("export", "--checkpoint", "shop", "--output", tmp_path / "shop.pt2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["parity_samples"] > 0
    server = Server(dlrm.store, "--checkpoint", "shop").wait_ready()
    try:
        served = server.post("/recommend", {"user": "c3", "top": 5})
        assert served.status_code == 200, served.text
        assert [e["item"] for e in served.json()["items"]] == [item for item, _ in beside["recommend"]]
        assert server.post("/predict", {"user": "c3", "items": ["sku-1"]}).status_code == 200
    finally:
        assert server.stop() == 0


def test_only_evaluate_needs_the_data(moved):
    dlrm, where = moved
    before = snapshot(dlrm.store)
    assert_error(dlrm("evaluate", "--checkpoint", "shop"), 1, str(where))
    assert dlrm("recommend", "--user", "c3", "--top", "3").exit_code == 0
    assert snapshot(dlrm.store) == before


def _as_older_format(store: Path) -> None:
    """Make ``shop`` look as dlrm wrote it before checkpoints kept their known items (format 5)."""
    meta_path = store / "shop" / "meta.json"
    meta = json.loads(meta_path.read_text())
    files = {name: digest for name, digest in meta["files"].items() if name != "known.pt"}
    (store / "shop" / "known.pt").unlink()
    _rewrite(meta_path, {**meta, "format": 5, "files": files})


def test_an_older_checkpoint_reads_its_data_and_says_so_when_it_is_gone(shop, moved, tmp_path):
    dlrm, where = moved
    _as_older_format(dlrm.store)
    assert_error(dlrm("recommend", "--user", "c3"), 1, "older dlrm")
    assert dlrm("predict", "--user", "c3", "--items", "sku-1").exit_code == 0  # scoring needs no data
    shutil.copy(tmp_path / "elsewhere.csv", where)
    again = dlrm("recommend", "--user", "c3", "--top", "5", "--json")
    assert again.exit_code == 0, again.output
    beside = shop[0]("recommend", "--user", "c3", "--top", "5", "--json")
    assert json.loads(again.stdout)["items"] == json.loads(beside.stdout)["items"]


def test_damaged_known_items_get_one_line(moved):
    dlrm, _ = moved
    (dlrm.store / "shop" / "known.pt").write_bytes(b"not a tensor file" * 10)
    before = snapshot(dlrm.store)
    assert_error(dlrm("recommend", "--user", "c3"), 1, "shop is corrupt")
    assert_error(dlrm("export", "--checkpoint", "shop", "--output", dlrm.store.parent / "x.pt2"), 1, "corrupt")
    assert snapshot(dlrm.store) == before


def test_a_number_for_a_model_with_string_ids_is_an_error_not_a_stranger(moved):
    from dlrm_cli import load
    from dlrm_cli.errors import DlrmUsageError

    dlrm, _ = moved
    model = load(store=dlrm.store)
    assert "shop (latest)" in repr(model)
    with pytest.raises(DlrmUsageError, match=r"user id 42 was given as a number.*strings such as 'c"):
        model.predict(42, ["sku-1"])
    with pytest.raises(DlrmUsageError, match="item id 7 was given as a number"):
        model.score(["c3"], [7])
    assert model.predict("c3", ["sku-1"]).items[0].item == "sku-1"
    assert len(model.predict("someone new", ["sku-1"]).items) == 1  # a string stranger: cold start, as before
