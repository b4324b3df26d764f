"""Heavy bags read from a training cache of their pooled sums (``dlrm train --heavy-bags N``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import TINY, tiny_request

from dlrm_cli.config import TrainConfig
from dlrm_cli.data.catalog import with_bags
from dlrm_cli.data.sources import load_dataset
from dlrm_cli.model.dlrm import _with_columns
from dlrm_cli.model.optim import build_for_training
from dlrm_cli.store.loading import open_model
from dlrm_cli.training import bag_cache
from dlrm_cli.training.bag_cache import BagCache
from dlrm_cli.training.run import model_config_for, train
from dlrm_cli.training.stages import _bag_cache


def weights(store, name: str) -> dict[str, torch.Tensor]:
    return open_model(store, name).checkpoint.tensors("model.pt")


def cache_over_30(tmp_path):
    """The tiny data with bags, a model, and a cache of the bags of more than 30 members (some are, some not)."""
    request = tiny_request(tmp_path / "store", bags=True)
    data = with_bags(load_dataset(request.config.data))
    model, _ = build_for_training(
        model_config_for(data, request.config.train), request.config.train, torch.device("cpu")
    )
    cache = BagCache(model, data.catalog, limit=30, refresh=1)
    cache.start()
    return data, model, cache


def test_every_bag_cached_and_refreshed_each_batch_trains_as_the_exact_bags(tmp_path):
    """Refreshed after every batch, the cache's values are the exact ones and its gradient the exact sum, applied
    once a batch by the same fused Adagrad: the weights after an epoch match the exact path's to rounding."""
    store = tmp_path / "store"
    train(tiny_request(store, name="exact", epochs=1, bags=True))
    train(tiny_request(store, name="cached", epochs=1, bags=True, heavy_bags=0, bag_refresh=1))
    train(tiny_request(store, name="later", epochs=1, bags=True, heavy_bags=0, bag_refresh=5))
    exact, cached, later = weights(store, "exact"), weights(store, "cached"), weights(store, "later")
    for key, tensor in exact.items():
        torch.testing.assert_close(cached[key], tensor, atol=1e-4, rtol=0)
    assert max(float((later[key] - tensor).abs().max()) for key, tensor in exact.items()) > 1e-3


def test_the_ranking_stage_s_ranker_reads_the_cache_too(tmp_path):
    """With --heavy-bags the two-stage ranker's bags come from the cache as well: refreshed every batch it
    trains as the exact ranker; refreshed after as many pairs as 20 of the main model's batches of 128 (5 of
    its own of 512), it trains otherwise (so the cache was read)."""
    store, stage = tmp_path / "store", {"epochs": 1, "bags": True, "retrieval": "ease", "retrieve": 20}
    train(tiny_request(store, name="exact", **stage))
    train(tiny_request(store, name="cached", heavy_bags=0, bag_refresh=1, **stage))
    train(tiny_request(store, name="later", heavy_bags=0, bag_refresh=20, **stage))
    rankers = {name: open_model(store, name).checkpoint.tensors("ranker.pt") for name in ("exact", "cached", "later")}
    for key, tensor in rankers["exact"].items():
        torch.testing.assert_close(rankers["cached"][key], tensor, atol=1e-4, rtol=0)
    assert max(float((rankers["later"][key] - tensor).abs().max()) for key, tensor in rankers["exact"].items()) > 1e-3


def test_the_ranker_refreshes_after_as_many_pairs_as_the_main_model(tmp_path):
    data, model, _ = cache_over_30(tmp_path)
    settings = TrainConfig(bags=True, heavy_bags=0, batch_size=128)
    refreshes = [_bag_cache(model, data.catalog, replace(settings, bag_refresh=every)).refresh for every in (20, 1, 3)]
    assert refreshes == [5, 1, 1]  # 20 x 128 pairs = 5 of the ranker's batches of 512; never below 1


def test_the_cached_value_is_the_exact_bag_less_the_rating_s_own_member(tmp_path):
    data, model, cache = cache_over_30(tmp_path)
    users, items = data.train.user[:64], data.train.item[:64]
    skip, cached = cache.batch(users, items)
    _, kjt = data.catalog.batch(users, items, leave_out=True)
    _, thinned = data.catalog.batch(users, items, leave_out=True, cached=skip)
    ebc = model.dlrm.sparse_arch.embedding_bag_collection
    exact = model._normalise_bags(model.dlrm.sparse_arch(kjt), kjt)
    for position, (flagged, values) in cached.items():
        assert flagged.any() and not flagged.all()  # some bags heavier than 30, some not
        torch.testing.assert_close(values.detach(), exact[flagged, position].detach(), atol=1e-5, rtol=0)
        feature = model.config.feature_names[position]
        assert int(thinned[feature].lengths()[flagged].sum()) == 0  # nothing for the tables to look up
        light = thinned[feature].lengths()[~flagged]
        assert torch.equal(light, kjt[feature].lengths()[~flagged])
    assert ebc is cache.ebc


def test_a_batch_of_training_pairs_reads_the_weights_found_for_them_once(tmp_path):
    """Given the training pairs, the cache finds each pair's weights once; a batch named by its pairs' index
    reads the same values as one whose weights are searched for."""
    data, model, _ = cache_over_30(tmp_path)
    train = data.train
    cache = BagCache(model, data.catalog, limit=30, refresh=1, pairs=(train.user, train.item))
    cache.start()
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:64]
    _, searched = cache.batch(train.user[rows], train.item[rows])
    _, read = cache.batch(train.user[rows], train.item[rows], rows)
    assert cache.pair_weights is not None and cache.pair_weights.shape == (len(cache.parts), len(train), 2)
    for position, (flagged, values) in searched.items():
        assert torch.equal(read[position][0], flagged)
        torch.testing.assert_close(read[position][1], values, atol=1e-6, rtol=0)
    cache.pair_weights.zero_()  # the batch reads them: without them every cached bag reads as nothing
    _, nothing = cache.batch(train.user[rows], train.item[rows], rows)
    assert all(bool((values == 0).all()) for _, values in nothing.values())
    assert any(bool((values != 0).any()) for _, values in searched.values())


@pytest.mark.parametrize("folded", [1, 32])
def test_the_cache_keeps_each_member_s_exact_gradient(tmp_path, monkeypatch, folded):
    """Bags above 30 members only: a gradient given to the cached values reaches each member of each heavy bag
    (less the rating's own) divided by the square root of what is left, as the exact pooling's would, summed
    over every batch read since the last refresh, whether the reads were added in as they came or at once."""
    monkeypatch.setattr(bag_cache, "FOLDED_READS", folded)
    data, _, cache = cache_over_30(tmp_path)
    catalog = data.catalog
    expected = torch.zeros_like(cache.cache.table, dtype=torch.float64)  # the sum as exact as it can be
    draws = torch.Generator().manual_seed(0)
    for batch in (slice(0, 64), slice(64, 160)):
        users, items = data.train.user[batch], data.train.item[batch]
        _, cached = cache.batch(users, items)
        given = {position: torch.randn(values.shape, generator=draws) for position, (_, values) in cached.items()}
        torch.autograd.backward([values for _, values in cached.values()], list(given.values()))
        for part in cache.parts:
            owners = users if part.owner == "users" else items
            others = catalog.items.id_rows[items] if part.owner == "users" else catalog.users.id_rows[users]
            bag = (catalog.users if part.owner == "users" else catalog.items).bags[part.feature]
            flagged, _ = cached[part.position]
            for grad, owner, other in zip(given[part.position], owners[flagged], others[flagged], strict=True):
                members = bag.values[bag.offsets[owner] : bag.offsets[owner + 1]]
                members = members[members != other]
                share = (grad.double() / len(members) ** 0.5).expand(len(members), -1)
                expected.index_add_(0, members + part.member_start, share)  # a member rated twice: twice
        assert len(cache.cache.reads) == (0 if folded == 1 else batch.stop // 64)  # kept, or added in as they came
    found = cache.cache.member_grad()
    torch.testing.assert_close(found.double(), expected, atol=1e-5, rtol=1e-5)  # float32 sums: relative rounding
    assert not cache.cache.reads and bool((cache.cache.member_grad() == 0).all())  # and then it starts afresh


def test_cached_columns_replace_their_features_with_the_values_and_gradients_of_index_copy():
    """The bag features come last, so their cached columns are joined on; any other positions are copied in.
    Either way, the same tensor and the same gradients as ``index_copy``."""
    for positions in ([3, 4], [1, 3], [4]):
        embedded = torch.randn(6, 5, 4, requires_grad=True)
        columns = [torch.randn(6, 4, requires_grad=True) for _ in positions]
        found = _with_columns(embedded, positions, columns)
        copied = embedded.index_copy(1, torch.tensor(positions), torch.stack(columns, dim=1))
        torch.testing.assert_close(found, copied, atol=0, rtol=0)
        given = torch.randn_like(found)
        inputs = [embedded, *columns]
        grads = torch.autograd.grad(found, inputs, given)
        for grad, reference in zip(grads, torch.autograd.grad(copied, inputs, given), strict=True):
            torch.testing.assert_close(grad, reference, atol=0, rtol=0)


def test_heavy_bags_without_bags_or_a_refresh_below_one_is_a_usage_error(dlrm):
    result = dlrm("train", "--heavy-bags", "8", *TINY)  # the built-in data trains without bags by default
    assert result.exit_code == 2 and "add --bags" in result.output
    result = dlrm("train", "--bags", "--heavy-bags", "8", "--bag-refresh", "0", *TINY)
    assert result.exit_code == 2 and "bag-refresh" in result.output
    result = dlrm("train", "--bags", "--heavy-bags", "8", "--embeddings", "plain", *TINY)
    assert result.exit_code == 2 and "fused" in result.output
