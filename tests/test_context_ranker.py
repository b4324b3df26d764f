"""The ranking stage of a two-stage checkpoint reads the context: on data where the channel decides which items
a user picks, the ranker orders the same user's candidates differently in each channel, everywhere that
recommends; a ranker trained without context columns still loads and orders as it did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Dlrm

USERS = ["u3", "u42", "u117", "u250"]
TOP = 5
TRAIN = ["--epochs", "2", "--embedding-dim", "8", "--retrieval", "ease", "--retrieve", "20"]


def write_channel_csv(path: Path, users: int = 400) -> Path:
    """Every user picks (rates 5) items i0-i19 through channel a and i20-i39 through channel b, and passes
    over (rates 1) a few of the other half in each channel, so that the channel varies within items too."""
    rng = np.random.default_rng(0)
    lines = ["user,item,rating,channel"]
    for user in range(users):
        for channel, picked, passed in (("a", range(0, 20), range(20, 40)), ("b", range(20, 40), range(0, 20))):
            lines += [f"u{user},i{item},5,{channel}" for item in rng.choice(picked, 9, replace=False)]
            lines += [f"u{user},i{item},1,{channel}" for item in rng.choice(passed, 2, replace=False)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ctx``, trained in two stages with the channel as a context column, and ``plain``, the same rows
    without it (a ranker that reads no context)."""
    folder = tmp_path_factory.mktemp("context-ranker")
    data = write_channel_csv(folder / "ratings.csv")
    dlrm = Dlrm(folder / "store")
    for name, columns in (("plain", []), ("ctx", ["--sparse-cols", "channel"])):
        result = dlrm("train", "--data", f"csv:{data}", *columns, *TRAIN, "--name", name)
        assert result.exit_code == 0, result.output
        assert "Two stages: validation NDCG@10" in result.output, result.output
    return folder / "store"


def _recommended(store: Path, checkpoint: str, user: str, *context: str) -> list[str]:
    result = Dlrm(store)("recommend", "--checkpoint", checkpoint, "--user", user, "--top", str(TOP), *context, "--json")
    assert result.exit_code == 0, result.output
    return [entry["item"] for entry in json.loads(result.stdout)["items"]]


def _first_half(items: list[str]) -> int:
    return sum(int(item[1:]) < 20 for item in items)


def test_the_ranker_orders_the_candidates_in_the_context_asked_about(store):
    from dlrm_cli import load

    model = load("ctx", store)
    assert model.loaded.stages is not None and model.loaded.stages.reads_context
    for user in USERS:
        in_a = _recommended(store, "ctx", user, "--context", "channel=a")
        in_b = _recommended(store, "ctx", user, "--context", "channel=b")
        assert _first_half(in_a) >= TOP - 1 and _first_half(in_b) <= 1, (user, in_a, in_b)
        api = {c: [e.item for e in model.recommend(user, top=TOP, context={"channel": c}).ranking.items] for c in "ab"}
        assert api == {"a": in_a, "b": in_b}
        default = model.context_columns["channel"].default
        assert _recommended(store, "ctx", user) == (in_a if default == "a" else in_b)


def test_serve_and_recommend_for_many_users_rank_in_the_context_given(store, tmp_path):
    pytest.importorskip("fastapi")
    from test_serve_faults import LiveServer

    expected = {user: _recommended(store, "ctx", user, "--context", "channel=b") for user in USERS}
    output, listed = tmp_path / "recs.csv", tmp_path / "users.txt"
    listed.write_text("\n".join(USERS) + "\n")
    users = ["--users", str(listed), "--top", str(TOP), "--output", str(output)]
    result = Dlrm(store)("recommend", "--checkpoint", "ctx", *users, "--context", "channel=b")
    assert result.exit_code == 0, result.output
    assert "same in any context" not in result.output
    lines = [line.split(",") for line in output.read_text().splitlines()[1:]]
    assert {user: [line[2] for line in lines if line[0] == user] for user in USERS} == expected
    server = LiveServer(store, "ctx").wait_ready()
    try:
        for user in USERS:
            answer = server.post("/recommend", {"user": user, "top": TOP, "context": {"channel": "b"}})
            assert answer.status_code == 200, answer.text
            assert [entry["item"] for entry in answer.json()["items"]] == expected[user]
    finally:
        server.server.should_exit = True
        server.thread.join(timeout=60)


@pytest.fixture(scope="module")
def old_style(store: Path) -> Path:
    """``old``: ``ctx`` with the ranking stage of ``plain`` (a ranker trained without context columns, as
    every two-stage checkpoint was before rankers read the context), its checksums made whole again."""
    from dlrm_cli.store.checkpoints import META, _meta_digest, sha256

    shutil.copytree(store / "ctx", store / "old")
    for file in ("ranker.pt", "retrieval.pt"):
        shutil.copyfile(store / "plain" / file, store / "old" / file)
    meta = json.loads((store / "old" / META).read_text())
    meta["stages"] = json.loads((store / "plain" / META).read_text())["stages"]
    meta["files"].update({file: sha256(store / "old" / file) for file in ("ranker.pt", "retrieval.pt")})
    meta["meta_sha256"] = _meta_digest(meta)
    (store / "old" / META).write_text(json.dumps(meta))
    return store


def test_a_ranker_trained_without_context_still_loads_and_orders_as_before(old_style, tmp_path):
    from dlrm_cli import load

    old = load("old", old_style)
    assert old.loaded.stages is not None and not old.loaded.stages.reads_context
    assert old.loaded.catalog.context is not None  # the main model still reads it
    for user in USERS:
        before = _recommended(old_style, "plain", user)
        assert _recommended(old_style, "old", user, "--context", "channel=a") == before
        assert _recommended(old_style, "old", user, "--context", "channel=b") == before
        ratings = [[e.rating for e in old.recommend(user, top=TOP, context={"channel": c}).ranking.items] for c in "ab"]
        assert not np.allclose(ratings[0], ratings[1], atol=1e-4)  # the rating beside each item reads it
    (tmp_path / "users.txt").write_text("u3\n")
    users = ["--users", str(tmp_path / "users.txt"), "--output", str(tmp_path / "r.csv")]
    result = Dlrm(old_style)("recommend", "--checkpoint", "old", *users, "--context", "channel=a")
    assert result.exit_code == 0, result.output
    assert "this ranker reads no context: these recommendations are the same in any context" in result.output


def test_each_training_pair_takes_the_context_of_its_own_row_or_of_a_positive_of_its_user():
    from dlrm_cli.retrieval.training_pairs import PairSettings, out_of_fold_pairs

    generator = torch.Generator().manual_seed(1)
    users = torch.arange(1, 31).repeat_interleave(12)
    items = torch.randint(1, 40, (len(users),), generator=generator)
    liked = torch.rand(len(users), generator=generator) < 0.6
    settings = PairSettings(folds=3, candidates=10, hard=4, uniform=4, generator="ease", seed=5)
    pairs = out_of_fold_pairs(users, items, liked, 31, torch.ones(40, dtype=torch.bool), settings)
    assert bool((pairs.labels == 0).any()) and bool((pairs.labels == 1).any())
    assert torch.equal(users[pairs.rows], pairs.users)  # every pair is ranked in a moment of its own user
    positive = pairs.labels == 1
    assert torch.equal(items[pairs.rows[positive]], pairs.items[positive]) and bool(liked[pairs.rows[positive]].all())
    assert len(torch.unique(pairs.rows[~positive])) > 1


def test_a_negative_takes_a_liked_row_of_its_user_in_the_part_or_any_of_its_rows_there():
    from dlrm_cli.retrieval.training_pairs import PairRows

    users, items = torch.tensor([1, 1, 1, 2, 2]), torch.tensor([1, 2, 3, 1, 2])
    held = torch.tensor([True, True, False, True, True])
    liked = torch.tensor([True, False, True, False, False])  # row 2: liked, but in another part
    sources = PairRows.of(users, items, held, liked, 3, 4, torch.Generator().manual_seed(0))
    asked = (torch.tensor([1, 1, 2, 2] * 20), torch.tensor([1, 3, 1, 3] * 20), torch.tensor([1.0, 0, 0, 0] * 20))
    rows = sources.rows_of(*asked).view(20, 4)
    assert rows[:, :2].unique().tolist() == [0]  # user 1: its positive's own row, and its one liked row
    assert rows[:, 2:].unique().tolist() == [3, 4]  # user 2 likes nothing in the part: any of its rows there
