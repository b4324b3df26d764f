"""The model's shapes, ranges and settings, and a checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_request
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_cli.config import ModelConfig, TableConfig
from dlrm_cli.model.dlrm import RatingDLRM
from dlrm_cli.scoring.metrics import score
from dlrm_cli.store.checkpoints import CheckpointStore
from dlrm_cli.store.loading import load_model


def small_config(**overrides) -> ModelConfig:
    settings = dict(
        num_dense=3,
        tables=(TableConfig("user_id", 10), TableConfig("item_id", 20), TableConfig("tags", 5)),
        embedding_dim=8,
        bottom_mlp=(16, 8),
        top_mlp=(16, 4),
    )
    settings.update(overrides)
    return ModelConfig(**settings)


def test_forward_gives_one_rating_per_sample_within_range():
    torch.manual_seed(0)
    model = RatingDLRM(small_config(rating_min=1.0, rating_max=5.0))
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user_id", "item_id", "tags"],
        values=torch.tensor([1, 2, 3, 4, 5, 6, 0, 1, 2, 4]),
        lengths=torch.tensor([1, 1, 1, 1, 1, 1, 3, 0, 1]),  # tags: 3 values, none, one
    )
    out = model(torch.randn(3, 3), kjt)
    assert out.shape == (3,)
    assert ((out >= 1.0) & (out <= 5.0)).all()
    out.sum().backward()  # the loss is outside; gradients reach every table
    weights = model.dlrm.sparse_arch.embedding_bag_collection.embedding_bags
    assert all(weights[name].weight.grad is not None for name in ("t_user_id", "t_item_id", "t_tags"))


def test_architecture_follows_the_config():
    model = RatingDLRM(small_config())
    linears = [m for m in model.dlrm.dense_arch.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 16), (16, 8)]
    over = [m for m in model.dlrm.over_arch.modules() if isinstance(m, torch.nn.Linear)]
    # dense embedding (8) + 3 sparse-dense dot products + 3 sparse-sparse ones
    assert [(m.in_features, m.out_features) for m in over] == [(8 + 6, 16), (16, 4), (4, 1)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bottom_mlp": (16, 4)}, "must end at embedding_dim=8"),
        ({"tables": ()}, "at least one sparse feature"),
        ({"tables": (TableConfig("user_id", 0),)}, "needs at least one row, got 0"),
        ({"rating_min": 5.0, "rating_max": 1.0}, "rating_min must be below rating_max"),
        ({"num_dense": -1}, "num_dense must be >= 0, got -1"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


def test_config_round_trips_through_dict():
    config = small_config()
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_a_saved_checkpoint_predicts_what_the_trained_model_predicted(tmp_path):
    from dlrm_cli.training.run import TrainingRun

    run = TrainingRun(tiny_request(tmp_path / "store", epochs=1))  # one epoch: the best is the last
    run.setup()
    result = run.train()
    run.cleanup()
    test, catalog = run.dataset.test, run.dataset.catalog
    trained = score(run.model, catalog, test.user, test.item, torch.device("cpu"))

    loaded = load_model(CheckpointStore(tmp_path / "store").load(result.name), torch.device("cpu"))
    again = score(loaded.model, loaded.catalog, test.user, test.item, torch.device("cpu"))
    # FBGEMM's fused tables trained the model; the loaded one looks rows up with plain EmbeddingBags.
    torch.testing.assert_close(again, trained, rtol=0, atol=1e-5)
    assert ModelConfig.from_dict(loaded.meta["model"]) == run.model_config
    # scoring reads each bag pooled: one row per entity, no longer a bag of rows
    pooled = {table.feature: table for table in loaded.model.config.tables}
    assert pooled["rated_items"].num_embeddings == len(loaded.catalog.users) + 1 and not pooled["rated_items"].bag
    assert not torch.equal(trained, torch.full_like(trained, trained[0]))  # it predicts, it does not guess
