"""Top-K ranking metrics: hand-built rankings with known answers, an independent implementation written
from the definitions, the baselines, and ``dlrm evaluate --k``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import assert_error

from dlrm_cli.config import SyntheticSpec
from dlrm_cli.data.synthetic import generate
from dlrm_cli.scoring.ranking import (
    BASELINES,
    EASE,
    build_task,
    first_hit,
    held_out_task,
    pure_svd,
    rank_metrics,
    sample_users_of,
    top_order,
    usable_baselines,
)


def _task(known: list[tuple[int, int]], held: list[tuple[int, int, float]], users: int = 3, items: int = 6):
    ku, ki = (torch.tensor([pair[i] for pair in known]) for i in (0, 1))
    hu, hi, hr = (torch.tensor([row[i] for row in held]) for i in (0, 1, 2))
    return build_task(users, items, (ku, ki, torch.full((len(known),), 4.0)), (hu, hi, hr.float()), 4.0)


def _fixed(scores: list[list[float]]):
    table = torch.tensor(scores)
    return lambda users: table[users]


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_the_partial_order_is_the_head_of_a_stable_full_sort(k):
    """Scores with many ties and blocked (-inf) columns: the first k columns, and the position of the first
    hit, are those of a stable argsort of the whole row (ties: lowest column first)."""
    generator = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 6, (64, 30), generator=generator).double()
    scores[torch.rand(scores.shape, generator=generator) < 0.3] = -math.inf
    hits = torch.rand(scores.shape, generator=generator) < 0.1
    hits[0] = False  # a row without a hit
    order = torch.argsort(-scores, dim=1, stable=True)
    assert torch.equal(top_order(scores, k), order[:, :k])
    in_order = hits.gather(1, order)
    first, found = first_hit(scores, hits)
    assert torch.equal(found, in_order.any(dim=1))
    assert torch.equal(first[found], in_order.double().argmax(dim=1)[found])


def test_hand_built_ranking_with_known_answers():
    # Items 0..5 all seen in training (by user 2). User 0 rated item 5 in training (left out of its ranking);
    # held out: items 1 and 3 relevant (rating >= 4), item 4 not (rating 2).
    known = [(2, item) for item in range(6)] + [(0, 5)]
    task = _task(known, [(0, 1, 5.0), (0, 3, 4.0), (0, 4, 2.0)])
    # user 0's ranking by score: 5 (left out), 2, 1, 4, 3, 0  ->  2, 1, 4, 3, 0
    scores = [[0.0, 0.8, 0.9, 0.5, 0.6, 1.0], [0] * 6, [0] * 6]
    result = rank_metrics(task, _fixed(scores), (1, 2, 4))
    assert result["users"] == 1 and task.skipped == 0
    assert result["mrr"] == pytest.approx(1 / 2)  # first relevant item (1) at rank 2
    at1, at2, at4 = result["@1"], result["@2"], result["@4"]
    assert (at1["hit_rate"], at1["precision"], at1["recall"], at1["ndcg"]) == (0.0, 0.0, 0.0, 0.0)
    assert at2["precision"] == pytest.approx(1 / 2) and at2["recall"] == pytest.approx(1 / 2)
    assert at2["ndcg"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert at2["map"] == pytest.approx((1 / 2) / 2)
    # top 4: 2, 1, 4, 3 -> hits at ranks 2 and 4
    assert at4["recall"] == 1.0 and at4["hit_rate"] == 1.0
    assert at4["ndcg"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert at4["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert at4["coverage"] == pytest.approx(4 / 6)


def test_ties_are_broken_by_item_row_and_users_without_relevant_items_are_skipped():
    known = [(2, item) for item in range(6)]
    # user 1 holds out only a rating of 3: not relevant, so skipped and counted
    task = _task(known, [(0, 4, 5.0), (1, 2, 3.0)])
    result = rank_metrics(task, _fixed([[1.0] * 6] * 3), (1, 5))  # every score tied
    assert result["users"] == 1 and task.skipped == 1
    assert result["@1"]["hit_rate"] == 0.0  # the tie puts item 0 first
    assert result["@5"]["hit_rate"] == 1.0 and result["mrr"] == pytest.approx(1 / 5)


def test_a_nan_score_ranks_last():
    known = [(2, item) for item in range(6)]
    task = _task(known, [(0, 4, 5.0)])
    nan = float("nan")
    result = rank_metrics(task, _fixed([[nan, nan, 0.1, 0.2, 0.3, 0.0], [0] * 6, [0] * 6]), (1,))
    assert result["@1"]["hit_rate"] == 1.0 and result["mrr"] == 1.0  # item 4 first, the NaNs after item 5


def _reference(task, scores: torch.Tensor, k: int) -> dict[str, float]:
    """The metrics from their definitions, one user at a time, with no shared code."""
    totals = dict.fromkeys(("ndcg", "recall", "precision", "hit_rate", "map"), 0.0)
    mrr, counted = 0.0, 0
    for user in task.users.tolist():
        known = {i for u, i in zip(task.known_users.tolist(), task.known_items.tolist(), strict=True) if u == user}
        relevant = {
            i for u, i in zip(task.relevant_users.tolist(), task.relevant_items.tolist(), strict=True) if u == user
        }
        candidates = [i for i in range(task.n_items) if task.candidates[i] and i not in known]
        ranked = sorted(candidates, key=lambda i: (-float(scores[user, i]), i))
        top = ranked[:k]
        hits = [i in relevant for i in top]
        ideal = min(len(relevant), k)
        totals["hit_rate"] += float(any(hits))
        totals["precision"] += sum(hits) / k
        totals["recall"] += sum(hits) / ideal
        totals["ndcg"] += sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h) / sum(
            1 / math.log2(r + 2) for r in range(ideal)
        )
        totals["map"] += sum(sum(hits[: r + 1]) / (r + 1) for r, h in enumerate(hits) if h) / ideal
        first = next((r for r, i in enumerate(ranked) if i in relevant), None)
        mrr += 0.0 if first is None else 1 / (first + 1)
        counted += 1
    return {**{name: value / counted for name, value in totals.items()}, "mrr": mrr / counted}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_an_implementation_written_from_the_definitions(seed):
    generator = torch.Generator().manual_seed(seed)
    users, items = 40, 30
    pairs = torch.randperm(users * items, generator=generator)[:500]
    u, i = pairs // items, pairs % items
    ratings = torch.randint(1, 6, (500,), generator=generator).float()
    task = build_task(users, items, (u[:350], i[:350], ratings[:350]), (u[350:], i[350:], ratings[350:]), 4.0)
    scores = torch.randint(0, 5, (users, items), generator=generator).float()  # small range: many ties
    result = rank_metrics(task, lambda rows: scores[rows], (3, 7))
    for k in (3, 7):
        expected = _reference(task, scores, k)
        for name in ("ndcg", "recall", "precision", "hit_rate", "map"):
            assert result[f"@{k}"][name] == pytest.approx(expected[name]), (k, name)
        assert result["mrr"] == pytest.approx(expected["mrr"])


def test_a_split_is_ranked_against_the_rows_before_it():
    """Validation rows are ranked against the training rows; test rows against training and validation rows
    (what ``evaluate --k``, the training's validation and the ranking benchmark all use)."""
    dataset = generate(SyntheticSpec(users=60, items=40, ratings=2_000, seed=1))
    train, validation, test = dataset.train, dataset.validation, dataset.test
    assert len(validation) and len(test)
    for split, before in (("validation", [train]), ("test", [train, validation])):
        task = held_out_task(dataset, split, 4.0)
        held = dataset.split(split)
        assert task.known_users.tolist() == torch.cat([part.user for part in before]).tolist()
        assert task.known_items.tolist() == torch.cat([part.item for part in before]).tolist()
        liked = held.rating >= 4.0
        assert task.relevant_users.tolist() == held.user[liked].tolist()
        assert task.relevant_items.tolist() == held.item[liked].tolist()
        assert task.users.tolist() == sorted(set(held.user[liked].tolist()))
        assert task.skipped == len(set(held.user.tolist())) - len(task.users)
        assert (task.n_users, task.n_items) == (len(dataset.catalog.users) + 1, len(dataset.catalog.items) + 1)


def test_baselines_rank_and_sampled_mode_keeps_the_relevant_items():
    generator = torch.Generator().manual_seed(0)
    users, items = 50, 40
    pairs = torch.randperm(users * items, generator=generator)[:900]
    u, i = pairs // items, pairs % items
    ratings = torch.randint(1, 6, (900,), generator=generator).float()
    task = build_task(users, items, (u[:700], i[:700], ratings[:700]), (u[700:], i[700:], ratings[700:]), 4.0)
    for name, make in BASELINES.items():
        result = rank_metrics(task, make(task), (5,))
        assert 0.0 <= result["@5"]["ndcg"] <= 1.0, name
    popular = BASELINES["most popular"](task)
    full = rank_metrics(task, popular, (5,))
    sampled = rank_metrics(task, popular, (5,), sampled=5)
    assert sampled["@5"]["hit_rate"] >= full["@5"]["hit_rate"]  # fewer competitors, never fewer hits


def test_pure_svd_never_makes_the_dense_matrix_and_scores_as_the_dense_formula():
    """PureSVD from the sparse ratings and each chunk's own rows equals r_u V V^T from the dense matrix; a pair
    known twice keeps its last rating, as the dense matrix's assignment does."""
    generator = torch.Generator().manual_seed(1)
    pairs = torch.randperm(60 * 40, generator=generator)[:700]
    u, i = pairs // 40, pairs % 40
    u, i = torch.cat((u, u[:3])), torch.cat((i, i[:3]))  # three pairs rated again, later
    ratings = torch.randint(1, 6, (703,), generator=generator).float()
    task = build_task(60, 40, (u, i, ratings), (u[:5], i[:5], ratings[:5]), 4.0)
    dense = torch.zeros(60, 40)
    dense[u[:700], i[:700]] = ratings[:700]
    dense[u[700:], i[700:]] = ratings[700:]
    torch.manual_seed(0)
    _, _, v = torch.svd_lowrank(dense, q=30, niter=8)
    users = torch.tensor([0, 7, 33, 59])
    expected = dense[users] @ v[:, :20] @ v[:, :20].T
    torch.testing.assert_close(pure_svd(task, factors=20)(users), expected, atol=1e-4, rtol=0)


def test_sampled_users_are_a_fixed_uniform_draw_and_ease_stays_within_its_item_limit():
    task = _task([(0, 0), (1, 1), (2, 2)], [(0, 3, 5.0), (1, 4, 5.0), (2, 5, 5.0)])
    once, again = sample_users_of(task, 2), sample_users_of(task, 2)
    assert torch.equal(once.users, again.users) and len(once.users) == 2
    assert set(once.users.tolist()) < {0, 1, 2} and once.users.tolist() == sorted(once.users.tolist())
    assert usable_baselines(task) == (BASELINES, {})
    wide = _task([(0, 0)], [(0, 3, 5.0)], items=20_001)
    usable, left_out = usable_baselines(wide)
    assert EASE not in usable and "20,001 item rows" in left_out[EASE] and set(usable) == set(BASELINES) - {EASE}


def test_evaluate_k_ranks_a_labelled_sample_of_users(trained):
    full = json.loads(trained("evaluate", "--k", "5", "--no-baselines", "--json").stdout)["ranking"]
    result = trained("evaluate", "--k", "5", "--no-baselines", "--sample-users", "4", "--json")
    assert result.exit_code == 0, result.output
    ranking = json.loads(result.stdout)["ranking"]
    assert ranking["users"] == 4 and ranking["of_users"] == full["users"] > 4 and full["of_users"] is None
    table = trained("evaluate", "--k", "5", "--no-baselines", "--sample-users", "4")
    assert f"4 users (SAMPLED uniformly from {full['users']:,})" in table.stdout
    assert_error(trained("evaluate", "--sample-users", "4"), 2, "--sample-users goes with --k")


def test_evaluate_k_reports_every_figure_beside_the_baselines(trained):
    result = trained("evaluate", "--k", "5,10", "--json")
    assert result.exit_code == 0, result.output
    ranking = json.loads(result.stdout)["ranking"]
    assert ranking["ks"] == [5, 10] and ranking["users"] > 0 and ranking["sampled"] is None
    assert set(ranking["models"]) == {"DLRM", "most popular", "PureSVD-50", "EASE λ=500"}
    for figures in ranking["models"].values():
        assert set(figures["@10"]) == {"ndcg", "recall", "precision", "hit_rate", "map", "cold", "coverage"}
        assert 0 <= figures["mrr"] <= 1
    table = trained("evaluate", "--k", "10", "--no-baselines", "--candidates", "20")
    assert table.exit_code == 0, table.output
    assert "Top 10" in table.stdout and "SAMPLED" in table.stdout and "EASE" not in table.stdout
    assert_error(trained("evaluate", "--k", "0"), 2, "--k must be comma-separated positive whole numbers")
    assert_error(trained("evaluate", "--k", "10", "--data", "csv:x.csv"), 2, "--k ranks a split of the checkpoint's")


def test_recommend_for_every_user_writes_one_row_per_user_and_rank(trained, tmp_path):
    import pandas as pd

    from dlrm_cli.data.sources import load_dataset
    from dlrm_cli.store.loading import open_model

    output = tmp_path / "recs.csv"
    result = trained("recommend", "--all-users", "--top", "3", "--output", output, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    frame = pd.read_csv(output)
    assert list(frame.columns) == ["user", "rank", "item", "title", "score", "unseen_in_training"]
    assert summary["rows"] == len(frame) == 3 * summary["users"] and summary["exclude_seen"] is True
    assert (frame.groupby("user")["rank"].apply(list) == pd.Series([[1, 2, 3]] * summary["users"])).all()
    assert (frame.groupby("user")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()
    train = load_dataset(open_model(trained.store, "tiny").checkpoint.run.data).train
    seen = set(zip(train.user.tolist(), train.item.tolist(), strict=True))  # synthetic ids are the rows
    assert not [pair for pair in zip(frame["user"], frame["item"], strict=True) if pair in seen]
    # the same top item as the single-user command
    single = json.loads(trained("recommend", "--user", "7", "--top", "1", "--json").stdout)
    assert str(frame[frame["user"] == 7]["item"].iloc[0]) == single["recommended"]
    ids = tmp_path / "users.txt"
    ids.write_text("3\n5\n")
    assert trained("recommend", "--users", ids, "--output", output, "--force", "--include-seen").exit_code == 0
    assert sorted(set(pd.read_csv(output)["user"])) == [3, 5]


def test_recommend_for_many_users_refuses_what_it_cannot_do(trained, tmp_path):
    out = tmp_path / "recs.csv"
    assert_error(trained("recommend"), 2, "give one of --user ID, --users FILE or --all-users")
    assert_error(trained("recommend", "--user", "1", "--all-users"), 2, "give one of --user ID")
    assert_error(trained("recommend", "--all-users"), 2, "--all-users and --users write a file: give --output")
    assert_error(trained("recommend", "--all-users", "--output", tmp_path / "r.txt"), 2, "must end in .csv or .parquet")
    assert_error(trained("recommend", "--user", "1", "--output", out), 2, "--output goes with --all-users or --users")
    out.write_text("mine")
    assert_error(trained("recommend", "--all-users", "--output", out), 2, "already exists; pass --force")
    assert out.read_text() == "mine"


def test_recommend_writes_parquet_when_pyarrow_is_installed(trained, tmp_path):
    output = tmp_path / "recs.parquet"
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert_error(trained("recommend", "--all-users", "--output", output), 2, "writing .parquet needs pyarrow")
        return
    import pandas as pd

    assert trained("recommend", "--all-users", "--top", "2", "--output", output).exit_code == 0
    assert len(pd.read_parquet(output)) > 0


# Rough edges a new user hit ------------------------------------------------------------------------------


def test_a_log_gets_progress_lines_during_a_long_epoch(dlrm, monkeypatch):
    from conftest import TINY

    from dlrm_cli.cli import ui

    monkeypatch.setattr(ui, "LINE_SECONDS", 0.0)  # not a terminal: a line at every batch here
    result = dlrm("train", "--epochs", "1", *TINY)
    assert result.exit_code == 0, result.output
    assert "epoch 1/1: batch 1/38 (3%), loss" in result.stderr
    assert "with training ratings" in result.stderr


def test_the_summary_says_when_patience_stopped_the_run(dlrm):
    from conftest import TINY

    overfits = ["--lr-gamma", "1", "--sparse-lr", "0.5", "--embedding-l2", "0"]  # worse after epoch 2
    result = dlrm("train", "--epochs", "10", "--patience", "1", *overfits, *TINY)
    assert result.exit_code == 0, result.output
    assert "Stopped early after epoch" in result.stdout and "(--patience 1)" in result.stdout


def test_after_an_interrupted_run_evaluate_says_how_to_use_it(trained):
    meta = trained.store / "tiny" / "meta.json"
    from dlrm_cli.store.checkpoints import _meta_digest

    record = json.loads(meta.read_text())
    record["complete"] = False  # as a run stopped by Ctrl-C leaves it
    record["meta_sha256"] = _meta_digest(record)
    meta.write_text(json.dumps(record))
    assert_error(
        trained("evaluate"),
        1,
        "tiny is from a run that was stopped before its last epoch; use it with --checkpoint tiny, or finish it "
        "with `dlrm train --resume tiny`",
    )


def test_evaluate_data_warns_when_it_overlaps_the_training_rows(dlrm, tmp_path):
    from fixtures import write_generic_csv

    path = write_generic_csv(tmp_path / "shop.csv")
    columns = ["--user-col", "customer", "--item-col", "sku", "--rating-col", "stars"]
    assert dlrm("train", "--data", f"csv:{path}", *columns, "--epochs", "1", "--embedding-dim", "8").exit_code == 0
    result = dlrm("evaluate", "--data", f"csv:{path}", "--json")
    assert result.exit_code == 0, result.output
    overlap = json.loads(result.stdout)["training_overlap"]
    assert 0 < overlap < 1500
    table = dlrm("evaluate", "--data", f"csv:{path}")
    assert f"Note: {overlap:,} of these" in table.stderr and "flatter" in table.stderr
