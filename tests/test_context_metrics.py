"""Every metric scores a held-out rating in its own context: evaluate's AUC and log loss, evaluate --k's NDCG
and training's validation NDCG (each user ranked in the context of the user's first relevant held-out
rating), recomputed here through the Python API with each context given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import Dlrm
from test_context import FAST

from dlrm_cli.data.context import ContextRows
from dlrm_cli.data.sources import load_dataset
from dlrm_cli.scoring.metrics import auc
from dlrm_cli.scoring.ranking import build_task, held_out_task, rank_metrics

RANKING = ["--objective", "ranking", "--sparse-cols", "channel", "--patience", "4"]


def _picked_by_channel(path: Path, n: int = 3000, seed: int = 0) -> Path:
    """Ratings whose channel decides which half of the catalogue is picked: app rows (60%) mostly rate items
    i0 to i19, web rows mostly i20 to i39 (one row in ten the other half, so the channel varies within every
    item); the stars are each user's and item's own, about half of them 4 or more."""
    rng = np.random.default_rng(seed)
    channel = rng.choice(["app", "web"], n, p=[0.6, 0.4])
    other_half = np.where(rng.random(n) < 0.9, channel == "web", channel == "app")
    user, item = rng.integers(0, 50, n), other_half * 20 + rng.integers(0, 20, n)
    biases = rng.normal(0, 0.5, (2, 50))
    rating = np.clip(np.round(3.6 + biases[0][user] + biases[1][item] + rng.normal(0, 0.5, n)), 1, 5)
    frame = pd.DataFrame({"user": [f"u{u}" for u in user], "item": [f"i{i}" for i in item], "rating": rating})
    frame["channel"] = channel
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with ``picked``: a ranking head trained on the channel column."""
    folder = tmp_path_factory.mktemp("context-metrics")
    data = _picked_by_channel(folder / "picked.csv")
    store = folder / "store"
    result = Dlrm(store)("train", "--data", f"csv:{data}", *RANKING, *FAST, "--name", "picked")
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def model(store: Path):
    from dlrm_cli import load

    return load("picked", store)


@pytest.fixture(scope="module")
def dataset(model):
    return load_dataset(model.loaded.checkpoint.run.data)


def _ids(table, rows: torch.Tensor) -> list[str]:
    return [str(key) for key in table.keys[rows.numpy()]]


def _channels(model, ratings) -> list[str]:
    """Each rating's channel as the file spells it."""
    vocabulary = model.loaded.catalog.context.vocabularies["channel"]
    return [vocabulary[int(row) - 1] for row in ratings.context.sparse["channel"][:, 0]]


def _classification(model, dataset, own_context: bool) -> tuple[float, float]:
    """AUC and log loss of the test pairs against evaluate's seeded negatives (each of a pair's negatives
    follows the pairs in turn: pair j % pairs), from the API's probabilities, each pair and its negatives
    in the pair's own context, or every one at the default context."""
    from dlrm_cli.scoring.evaluation import seeded_negatives

    held, catalog = dataset.test, model.loaded.catalog
    users, items = seeded_negatives(model.loaded, held, dataset.train)[:2]  # the same seeded draw
    channels = _channels(model, held)
    per_pair = len(items) // len(held)

    def probabilities(user_rows: torch.Tensor, item_rows: torch.Tensor, contexts: list[str]) -> torch.Tensor:
        context = [{"channel": channel} for channel in contexts] if own_context else None
        return model.score(_ids(catalog.users, user_rows), _ids(catalog.items, item_rows), context=context).double()

    positive = probabilities(held.user, held.item, channels)
    negative = probabilities(users, items, channels * per_pair)
    labels = torch.cat((torch.ones(len(positive)), torch.zeros(len(negative)))).double()
    log_loss = torch.nn.functional.binary_cross_entropy(torch.cat((positive, negative)), labels)
    return auc(positive, negative), float(log_loss)


def test_evaluate_scores_each_pair_and_its_negatives_in_the_pair_s_own_context(store, model, dataset):
    result = Dlrm(store)("evaluate", "--checkpoint", "picked", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)["interactions"]
    own_auc, own_loss = _classification(model, dataset, own_context=True)
    assert printed["auc"] == pytest.approx(own_auc, abs=1e-4)
    assert printed["log_loss"] == pytest.approx(own_loss, abs=1e-4)
    default_auc, default_loss = _classification(model, dataset, own_context=False)
    assert abs(default_auc - own_auc) > 0.02 or abs(default_loss - own_loss) > 0.02  # the context matters here


def _ndcg(model, dataset, split: str, own_context: bool) -> float:
    """NDCG@10 of the API's probabilities, each user's candidates scored in the channel of the user's first
    held-out rating of 4 or more (own_context) or at the default context."""
    held, catalog = dataset.split(split), model.loaded.catalog
    task = held_out_task(dataset, split, 4.0)
    candidates = torch.nonzero(task.candidates).squeeze(1)
    channels = _channels(model, held)
    first = {}
    for user, rating, channel in zip(held.user.tolist(), held.rating.tolist(), channels, strict=True):
        if rating >= 4.0:
            first.setdefault(user, channel)

    def scorer(users: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(users), task.n_items), float("-inf"))
        for row, user in enumerate(users.tolist()):
            context = {"channel": first[user]} if own_context else None
            wanted = _ids(catalog.users, torch.full((len(candidates),), user))
            out[row, candidates] = model.score(wanted, _ids(catalog.items, candidates), context=context)
        return out

    return float(rank_metrics(task, scorer, (10,))["@10"]["ndcg"])  # type: ignore[index]


def test_evaluate_k_ranks_each_user_in_the_context_of_their_first_relevant_held_out_rating(store, model, dataset):
    result = Dlrm(store)("evaluate", "--checkpoint", "picked", "--k", "10", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)["ranking"]["models"]["DLRM"]["@10"]["ndcg"]
    own = _ndcg(model, dataset, "test", own_context=True)
    assert printed == pytest.approx(own, abs=1e-6)
    assert abs(_ndcg(model, dataset, "test", own_context=False) - own) > 0.01  # the context matters here


def test_training_validation_ndcg_ranks_each_user_in_their_own_context(model, dataset):
    recorded = model.loaded.meta["metrics"]["validation"]["ndcg"]  # the saved epoch's, measured while training
    assert recorded == pytest.approx(_ndcg(model, dataset, "validation", own_context=True), abs=1e-6)


def test_a_user_s_context_is_that_of_their_first_relevant_held_out_row():
    known = (torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([5.0, 5.0]))
    held = (torch.tensor([1, 0, 1, 0, 1]), torch.tensor([2, 2, 3, 3, 0]), torch.tensor([2.0, 5.0, 4.0, 4.0, 5.0]))
    context = ContextRows(torch.arange(5.0)[:, None], {"channel": torch.arange(10, 15)[:, None]})
    task = build_task(2, 4, known, held, 4.0, context)
    chosen = task.user_context(torch.tensor([1, 0]))
    assert chosen.dense[:, 0].tolist() == [2.0, 1.0]  # user 1's first row is below 4: its second row counts
    assert chosen.sparse["channel"][:, 0].tolist() == [12, 11]
    assert build_task(2, 4, known, held, 4.0).user_context(torch.tensor([0, 1])) is None


def test_export_measures_an_int8_ranking_head_with_each_pair_in_its_own_context(store, model, dataset, tmp_path):
    result = Dlrm(store)("export", "--checkpoint", "picked", "--head", "ranking", "--format", "torchscript",
                         "--output", str(tmp_path / "ranking.pt"), "--quantize", "int8", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)["quantization"]  # on the test pairs and evaluate's negatives
    assert measured["float_auc"] == pytest.approx(_classification(model, dataset, own_context=True)[0], abs=1e-4)
