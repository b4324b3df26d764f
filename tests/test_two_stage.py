"""The two-stage recommender's parts: the known items, the candidate generators, the pair features and the
ranker's training pairs, whose retrieval features never come from a generator that saw the pair."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from dlrm_cli.retrieval.features import pair_features, standing, top_candidates
from dlrm_cli.retrieval.generators import Ease, PureSvd, check_generator, fit_generator, masked_scores
from dlrm_cli.retrieval.history import History
from dlrm_cli.retrieval.training_pairs import PairSettings, folds_of, out_of_fold_pairs
from dlrm_cli.scoring.ranking import build_task, ease


def _clicks(users: int = 40, items: int = 30, per_user: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Users who click within one of three groups of items, so that the generators have something to find."""
    generator = torch.Generator().manual_seed(seed)
    rows, columns = [], []
    for user in range(1, users):
        group = user % 3
        chosen = torch.randperm(items // 3, generator=generator)[:per_user] * 3 + group
        rows.append(torch.full((per_user,), user))
        columns.append(chosen.clamp(min=1, max=items - 1))
    return torch.cat(rows), torch.cat(columns)


def test_history_holds_each_users_items_once_and_round_trips():
    history = History.of_pairs(torch.tensor([2, 0, 0, 2, 2]), torch.tensor([3, 1, 1, 0, 1]), 3, 4)
    assert history.of(0).tolist() == [1] and history.of(1).tolist() == [] and history.of(2).tolist() == [0, 1, 3]
    assert history.counts().tolist() == [1, 0, 3] and history.item_counts().tolist() == [1, 2, 0, 1]
    assert history.matrix(torch.tensor([2, 0])).tolist() == [[1, 1, 0, 1], [0, 1, 0, 0]]
    assert history.without(torch.tensor([2]), torch.tensor([1])).of(2).tolist() == [0, 3]
    again = History.from_state(history.state())
    assert torch.equal(again.items, history.items) and torch.equal(again.offsets, history.offsets)


def test_ease_is_the_baseline_that_evaluate_fits():
    users, items = _clicks()
    n_users, n_items = 40, 30
    history = History.of_pairs(users, items, n_users, n_items)
    task = build_task(
        n_users, n_items, (users, items, torch.ones(len(users))), (users[:5], items[:5], torch.ones(5)), 1.0
    )
    asked = torch.tensor([3, 7, 11])
    expected = ease(task, 500.0)(asked)
    assert torch.allclose(Ease.fit(history, 500.0).scores(history.matrix(asked)), expected, atol=1e-5)


def test_pure_svd_recovers_a_rank_one_matrix():
    users = torch.arange(10).repeat_interleave(5)
    items = torch.arange(5).repeat(10)  # every user knows every item: X is all ones, of rank one
    history = History.of_pairs(users, items, 10, 5)
    scores = PureSvd.fit(history, rank=1).scores(history.matrix(torch.arange(10)))
    assert torch.allclose(scores, torch.ones(10, 5), atol=1e-4)


def test_auto_picks_ease_for_small_catalogues_and_refuses_unknown_kinds():
    history = History.of_pairs(*_clicks(), 40, 30)
    assert fit_generator(history).kind == "ease" and fit_generator(history, "svd").kind == "svd"
    with pytest.raises(ValueError, match="retrieval must be one of"):
        fit_generator(history, "two-tower")


def test_candidates_features_are_the_pair_features_of_their_ranks():
    history = History.of_pairs(*_clicks(), 40, 30)
    users = torch.tensor([4, 5, 9])
    allowed = history.item_counts() > 0
    scores = masked_scores(fit_generator(history), history.matrix(users), allowed)
    items, values, features = top_candidates(scores, 6, history.item_counts(), history.counts()[users])
    assert torch.equal(values, scores.gather(1, items)) and bool((values[:, :-1] >= values[:, 1:]).all())
    mean, std = standing(scores)
    ranks = torch.arange(6).expand_as(items)  # a candidate's rank is its place in the cut
    counted = (scores[:, None, :] > values[:, :, None]).sum(dim=2)
    assert bool((counted <= ranks).all())  # the same, but for ties, which the cut orders
    expected = pair_features(
        values, mean[:, None], std[:, None], ranks, history.item_counts()[items], history.counts()[users][:, None]
    )
    assert torch.allclose(features, expected)
    assert torch.allclose(features[..., 1], (values - mean[:, None]) / std[:, None])
    assert bool((history.matrix(users).gather(1, items) == 0).all())  # nothing a user already knows


def test_no_training_row_feeds_its_own_pair_feature():
    """Each positive's score feature is what a generator fitted without the positive's fold gives it (and
    differs from what the generator fitted on every row gives it, which saw the pair)."""
    users, items = _clicks()
    n_users, n_items = 40, 30
    liked = torch.ones(len(users), dtype=torch.bool)
    allowed = History.of_pairs(users, items, n_users, n_items).item_counts() > 0
    settings = PairSettings(folds=3, candidates=10, hard=3, uniform=3, generator="ease", seed=4)
    pairs = out_of_fold_pairs(users, items, liked, n_users, allowed, settings)
    fold = folds_of(len(users), settings)
    everything = fit_generator(History.of_pairs(users, items, n_users, n_items), "ease")
    checked, differs = 0, 0
    for k in range(settings.folds):
        held = fold == k
        others = History.of_pairs(users[~held], items[~held], n_users, n_items)
        generator = fit_generator(others, "ease")
        for user, item in zip(users[held].tolist(), items[held].tolist(), strict=True):
            at = ((pairs.users == user) & (pairs.items == item) & (pairs.labels == 1)).nonzero()
            assert len(at) == 1, (user, item)
            feature = float(pairs.features[at[0, 0], 0])
            row = others.matrix(torch.tensor([user]))
            assert feature == pytest.approx(float(generator.scores(row)[0, item]), abs=1e-5)
            seen = History.of_pairs(users, items, n_users, n_items).matrix(torch.tensor([user]))
            differs += not math.isclose(feature, float(everything.scores(seen)[0, item]), abs_tol=1e-4)
            checked += 1
    assert checked == len(users) and differs > checked // 2
    negatives = pairs.labels == 0
    known = set(zip(users.tolist(), items.tolist(), strict=True))
    assert not any(
        pair in known for pair in zip(pairs.users[negatives].tolist(), pairs.items[negatives].tolist(), strict=True)
    )


def test_a_fold_of_more_users_than_its_limit_draws_the_pairs_of_a_sample_of_them():
    users, items = _clicks()
    n_users, n_items = 40, 30
    liked = torch.ones(len(users), dtype=torch.bool)
    allowed = History.of_pairs(users, items, n_users, n_items).item_counts() > 0
    every = PairSettings(folds=3, candidates=10, hard=3, uniform=3, generator="ease", seed=4, users=None)
    whole = out_of_fold_pairs(users, items, liked, n_users, allowed, every)
    same = out_of_fold_pairs(users, items, liked, n_users, allowed, replace(every, users=39))  # no fold reaches it
    assert all(torch.equal(getattr(same, name), getattr(whole, name)) for name in ("users", "items", "features"))
    sampled = out_of_fold_pairs(users, items, liked, n_users, allowed, replace(every, users=10))
    fold = folds_of(len(users), every)
    fold_of = {(u, i): k for u, i, k in zip(users.tolist(), items.tolist(), fold.tolist(), strict=True)}
    chosen: list[set[int]] = [set(), set(), set()]
    for user, item in zip(sampled.users.tolist(), sampled.items.tolist(), strict=True):
        if (user, item) in fold_of:  # a positive: its fold is its row's
            chosen[fold_of[(user, item)]].add(user)
    assert all(0 < len(fold_users) <= 10 for fold_users in chosen) and len(sampled) < len(whole)
    # a sampled user's positives are all of its fold's rows, as without the limit
    for k, fold_users in enumerate(chosen):
        for user in fold_users:
            rows = {i for (u, i), f in fold_of.items() if u == user and f == k}
            mine = (sampled.users == user) & (sampled.labels == 1)
            assert {i for i in sampled.items[mine].tolist() if fold_of[(user, i)] == k} == rows


def test_drawing_pairs_checks_for_a_stop_between_chunks_of_users(monkeypatch):
    import dlrm_cli.retrieval.training_pairs as training_pairs

    monkeypatch.setattr(training_pairs, "USER_CHUNK", 4)
    users, items = _clicks()
    allowed = History.of_pairs(users, items, 40, 30).item_counts() > 0
    settings = PairSettings(folds=2, candidates=10, hard=3, uniform=3, generator="ease")
    calls = []

    def stop() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        out_of_fold_pairs(
            users, items, torch.ones(len(users), dtype=torch.bool), 40, allowed, settings, check_stop=stop
        )
    assert len(calls) == 3  # within the first fold's ten chunks


def test_a_user_who_knows_nothing_gets_the_most_popular_items():
    history = History.of_pairs(*_clicks(), 40, 30)
    counts, allowed = history.item_counts(), history.item_counts() > 0
    nobody = torch.zeros(1, 30)
    for kind in ("ease", "svd"):
        generator = fit_generator(history, kind)
        assert bool((generator.scores(nobody) == 0).all())  # the generator alone has nothing to go on
        scores = masked_scores(generator, nobody, allowed, counts)[0]
        best = torch.topk(scores, 5).indices
        assert counts[best].tolist() == sorted(counts[allowed].tolist(), reverse=True)[:5]


def test_ease_is_refused_where_its_matrix_cannot_fit():
    check_generator("ease", 20_000)
    check_generator("svd", 60_000)
    with pytest.raises(ValueError, match=r"60,000 items would take 13\.4 GiB"):
        check_generator("ease", 60_000)
