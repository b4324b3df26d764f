"""Implicit-feedback bags: each user's rated items and each item's raters, from training rows only."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import TINY, tiny_request
from fixtures import write_ml1m
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_cli.config import ModelConfig, TableConfig
from dlrm_cli.data.catalog import Bag, with_bags
from dlrm_cli.data.sources import load_dataset, parse_data_option
from dlrm_cli.model.dlrm import build_model, pool_bags
from dlrm_cli.scoring.metrics import score
from dlrm_cli.store.loading import open_model


@pytest.fixture(scope="module")
def movielens(tmp_path_factory: pytest.TempPathFactory):
    folder = write_ml1m(tmp_path_factory.mktemp("ml1m") / "ml-1m")
    return with_bags(load_dataset(parse_data_option(f"movielens:{folder}")))


def pairs_in_bags(dataset) -> tuple[Counter, Counter]:
    """(user id row, item id row) pairs as the user bags and as the item bags hold them."""
    catalog = dataset.catalog
    users, items = catalog.users, catalog.items
    user_bag, item_bag = users.bags["rated_items"], items.bags["raters"]
    from_users, from_items = Counter(), Counter()
    for row in range(len(users) + 1):
        for item in user_bag.values[user_bag.offsets[row] : user_bag.offsets[row + 1]].tolist():
            from_users[(int(users.id_rows[row]), item)] += 1
    for row in range(len(items) + 1):
        for user in item_bag.values[item_bag.offsets[row] : item_bag.offsets[row + 1]].tolist():
            from_items[(user, int(items.id_rows[row]))] += 1
    return from_users, from_items


def id_pairs(dataset, ratings) -> Counter:
    users, items = dataset.catalog.users, dataset.catalog.items
    return Counter(zip(users.id_rows[ratings.user].tolist(), items.id_rows[ratings.item].tolist(), strict=True))


def test_bags_hold_exactly_the_training_ratings_and_no_held_out_one(movielens):
    from_users, from_items = pairs_in_bags(movielens)
    train = id_pairs(movielens, movielens.train)
    assert from_users == train and from_items == train  # every training rating once, in both bags
    for held_out in (movielens.validation, movielens.test):
        pairs = id_pairs(movielens, held_out)
        assert pairs and not set(pairs) - set(train) & set(from_users)  # no held-out pair in any bag


def test_the_vocabularies_and_bag_tables_come_from_training_rows(movielens):
    catalog = movielens.catalog
    trained_users = set(catalog.users.id_rows[movielens.train.user].tolist())
    trained_items = set(catalog.items.id_rows[movielens.train.item].tolist())
    assert set(catalog.users.bags["rated_items"].values.tolist()) <= trained_items
    assert set(catalog.items.bags["raters"].values.tolist()) <= trained_users
    assert catalog.users.bags["rated_items"].table_rows == catalog.items.id_table_rows
    assert catalog.items.bags["raters"].table_rows == catalog.users.id_table_rows
    neutral = catalog.users.neutral_row
    assert int(catalog.users.bags["rated_items"].sizes(torch.tensor([neutral]))) == 0  # an unknown user: no bag


def bags_of(kjt, feature: str) -> list[list[int]]:
    return [v.tolist() for v in kjt.to_dict()[feature].to_dense()]


def test_training_leaves_each_rating_out_of_its_own_bags(movielens):
    catalog, train = movielens.catalog, movielens.train
    users, items = train.user[:64], train.item[:64]
    user_ids, item_ids = catalog.users.id_rows[users], catalog.items.id_rows[items]
    whole = bags_of(catalog.batch(users, items)[1], "rated_items")
    for leave_out in (False, True):
        _, kjt = catalog.batch(users, items, leave_out=leave_out)
        rated, raters = bags_of(kjt, "rated_items"), bags_of(kjt, "raters")
        for b in range(64):
            assert (int(item_ids[b]) in rated[b]) is not leave_out
            assert (int(user_ids[b]) in raters[b]) is not leave_out
            kept = [i for i in whole[b] if not (leave_out and i == item_ids[b])]  # (a rating repeated: all go)
            assert rated[b] == kept


def test_a_bag_is_gathered_in_batch_order_with_its_own_members():
    bag = Bag.build(np.array([0, 0, 0, 1, 1, 2]), np.array([5, 3, 4, 1, 2, 7]), n_owners=4, table_rows=8)
    values, lengths = bag.gather(torch.tensor([1, 3, 0, 2]), leave_out=torch.tensor([2, 9, 3, 7]))
    assert lengths.tolist() == [1, 0, 2, 0] and values.tolist() == [1, 4, 5]
    values, lengths = bag.gather(torch.tensor([2, 0]))
    assert lengths.tolist() == [1, 3] and values.tolist() == [7, 3, 4, 5]
    rows = torch.tensor([1, 3, 0, 2])  # every bag left to a training cache: flagged one by one, or all at once
    for skip in (torch.ones(4, dtype=torch.bool), True):
        values, lengths = bag.gather(rows, leave_out=torch.tensor([2, 9, 3, 7]), skip=skip)
        assert values.tolist() == [] and lengths.tolist() == [0, 0, 0, 0] and lengths.dtype == torch.int64
    values, lengths = bag.gather(rows, skip=torch.tensor([True, False, False, False]))  # a flag per owner
    assert lengths.tolist() == [2, 0, 0, 1] and values.tolist() == [1, 2, 7]


def test_the_model_pools_a_bag_as_its_sum_over_the_square_root_of_its_size():
    config = ModelConfig(
        num_dense=1,
        tables=(TableConfig("user_id", 3), TableConfig("rated_items", 5, bag=True)),
        embedding_dim=4,
        bottom_mlp=(4,),
        top_mlp=(4,),
    )
    model = build_model(config)
    table = model.dlrm.sparse_arch.embedding_bag_collection.embedding_bags["t_rated_items"].weight
    kjt = KeyedJaggedTensor.from_lengths_sync(
        ["user_id", "rated_items"], torch.tensor([1, 2, 0, 1, 4, 3]), torch.tensor([1, 1, 3, 1])
    )
    seen = {}

    def keep(module, args, kwargs, out):
        seen["sparse"] = kwargs["sparse_features"].detach()

    model.dlrm.inter_arch.register_forward_hook(keep, with_kwargs=True)
    model(torch.zeros(2, 1), kjt)
    bag = seen["sparse"][:, 1]  # B x D: what the interaction takes for the bag
    expected = torch.stack([(table[0] + table[1] + table[4]) / 3**0.5, table[3]]).detach()
    torch.testing.assert_close(bag, expected)
    torch.testing.assert_close(seen["sparse"][:, 0], model_ids(model, [1, 2]))


def model_ids(model, rows: list[int]) -> torch.Tensor:
    return model.dlrm.sparse_arch.embedding_bag_collection.embedding_bags["t_user_id"].weight[rows].detach()


def test_a_loaded_model_scores_with_pooled_bags_as_the_trained_model_does_with_whole_ones(tmp_path):
    from dlrm_cli.training.run import train

    train(tiny_request(tmp_path / "store", name="bags", epochs=1))
    loaded = open_model(tmp_path / "store", "bags")
    assert loaded.catalog.users.bags["rated_items"].normalised is False  # pooled: one row per user
    dataset = with_bags(load_dataset(loaded.checkpoint.run.data))
    whole = build_model(ModelConfig.from_dict(loaded.meta["model"]))
    whole.load_state_dict(loaded.checkpoint.tensors("model.pt"))
    test = dataset.test
    expected = score(whole, dataset.catalog, test.user, test.item, torch.device("cpu"))
    pooled = score(loaded.model, loaded.catalog, test.user, test.item, torch.device("cpu"))
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=0)
    assert pool_bags(loaded.model, loaded.catalog)[0] is loaded.model  # already pooled: left as it is


def test_bags_are_chosen_per_run_and_recorded(dlrm):
    assert dlrm("train", "--epochs", "1", "--name", "plain", *TINY).exit_code == 0  # synthetic: none by default
    assert dlrm("train", "--epochs", "1", "--bags", "--name", "bags", *TINY).exit_code == 0
    metas = {name: json.loads((dlrm.store / name / "meta.json").read_text()) for name in ("plain", "bags")}
    assert metas["plain"]["run"]["train"]["bags"] is False and metas["bags"]["run"]["train"]["bags"] is True
    assert "rated_items" not in metas["plain"]["features"]["sparse"]
    # the bags come after the side features, before the built-in data's context column
    assert metas["bags"]["features"]["sparse"][-3:] == ["rated_items", "raters", "channel"]
    assert [t["bag"] for t in metas["bags"]["model"]["tables"]][-3:] == [True, True, False]


@pytest.mark.parametrize(
    ("train", "export"),
    [
        (["--bags"], []),
        (["--bags"], ["--format", "torchscript"]),
        (["--bags"], ["--inputs", "features"]),
        (["--bags"], ["--quantize", "int8"]),
        (["--bags", "--no-biases"], ["--format", "torchscript"]),
        (["--no-bags", "--no-biases"], ["--format", "torchscript", "--inputs", "features"]),
    ],
)
def test_every_kind_of_artifact_holds_the_bags_and_matches_the_checkpoint(dlrm, tmp_path, train, export):
    assert dlrm("train", "--epochs", "1", *train, *TINY).exit_code == 0
    output = tmp_path / "model.out"
    result = dlrm("export", "--output", output, *export, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["max_abs_difference"] <= 1e-5  # against the checkpoint, on held-out pairs and unknown ids
    described = json.loads((tmp_path / "model.out.json").read_text())
    sparse = described["sparse"] if "--inputs" in export else described["features"]["sparse"]
    bags = [entry for entry in sparse if entry["feature"] in ("rated_items", "raters")]
    assert len(bags) == (2 if "--bags" in train else 0)
    assert all("pooled inside the artifact" in entry["ids"] for entry in bags)


def test_a_capped_bag_keeps_a_sorted_subset_of_each_large_bag_and_every_small_one_whole():
    owners = np.repeat(np.arange(4), [0, 3, 10, 6])
    members = np.concatenate([[4, 1, 7], np.arange(10) * 2, np.arange(6) + 30])
    bag = Bag.build(owners, members, n_owners=5, table_rows=40)
    capped = bag.capped(5, seed=3)
    assert capped.offsets.diff().tolist() == [0, 3, 5, 5, 0]
    for row in range(5):
        kept = capped.values[capped.offsets[row] : capped.offsets[row + 1]].tolist()
        whole = bag.values[bag.offsets[row] : bag.offsets[row + 1]].tolist()
        assert kept == sorted(kept) and set(kept) <= set(whole) and len(set(kept)) == len(kept)
    assert capped.values[:3].tolist() == [1, 4, 7]
    assert bag.capped(10, seed=3) is bag  # no bag above the cap: nothing to draw
    assert torch.equal(bag.capped(5, seed=3).values, capped.values)  # the seed decides the draw


def test_a_capped_bag_is_an_unbiased_sample_of_the_whole_bag():
    n, cap, draws = 40, 8, 4000
    bag = Bag.build(np.zeros(n, dtype=np.int64), np.arange(n), n_owners=1, table_rows=n)
    counts = torch.zeros(n)
    for seed in range(draws):
        counts[bag.capped(cap, seed).values] += 1
    # each member stays with probability cap / n = 0.2: a binomial count's 5-sigma band holds every member's
    expected, sigma = draws * cap / n, (draws * cap / n * (1 - cap / n)) ** 0.5
    assert (counts - expected).abs().max() < 5 * sigma
    weights = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    estimate = sum(weights[bag.capped(cap, seed).values].sum(0) * n / cap for seed in range(draws)) / draws
    torch.testing.assert_close(estimate, weights.sum(0), atol=0.3, rtol=0)


def test_a_run_with_a_bag_cap_trains_and_scores_on_the_capped_bags(tmp_path):
    from dlrm_cli.training.run import train

    train(tiny_request(tmp_path / "store", name="capped", epochs=1, bags=True, bag_cap=3))
    loaded = open_model(tmp_path / "store", "capped")
    assert loaded.meta["run"]["train"]["bag_cap"] == 3
    whole = build_model(ModelConfig.from_dict(loaded.meta["model"]))
    whole.load_state_dict(loaded.checkpoint.tensors("model.pt"))
    data = load_dataset(loaded.checkpoint.run.data)
    capped, uncapped = with_bags(data, cap=3, seed=loaded.checkpoint.run.train.seed), with_bags(data)
    assert int(capped.catalog.items.bags["raters"].offsets.diff().max()) == 3
    test = data.test
    pooled = score(loaded.model, loaded.catalog, test.user, test.item, torch.device("cpu"))
    expected = score(whole, capped.catalog, test.user, test.item, torch.device("cpu"))
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=0)  # the checkpoint keeps the run's draw
    assert not torch.allclose(pooled, score(whole, uncapped.catalog, test.user, test.item, torch.device("cpu")))


def test_a_bag_cap_below_one_or_without_bags_is_a_usage_error(dlrm):
    result = dlrm("train", "--bags", "--bag-cap", "0", *TINY)
    assert result.exit_code == 2 and "bag-cap" in result.output
    result = dlrm("train", "--bag-cap", "8", *TINY)  # the built-in data trains without bags by default
    assert result.exit_code == 2 and "add --bags" in result.output
    assert not (dlrm.store).exists() or not any(dlrm.store.iterdir())
