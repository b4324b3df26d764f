"""The fused tables fed straight from a KJT in table order compute what TorchRec's own path does."""

from __future__ import annotations

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_cli.model.fused import OrderedFusedEmbeddingBagCollection

FEATURES = ["user_id", "item_id", "genres"]


def both(features: list[str]) -> tuple[FusedEmbeddingBagCollection, OrderedFusedEmbeddingBagCollection]:
    """TorchRec's collection and ours over one 8-wide table per feature, with the same weights."""
    tables = [
        EmbeddingBagConfig(name=f"t_{name}", embedding_dim=8, num_embeddings=50, feature_names=[name])
        for name in features
    ]
    made = []
    for kind in (FusedEmbeddingBagCollection, OrderedFusedEmbeddingBagCollection):
        torch.manual_seed(0)
        made.append(kind(tables=tables, optimizer_type=RowWiseAdagrad, optimizer_kwargs={"lr": 0.1}))
    return made[0], made[1]


def batch(keys: list[str]) -> KeyedJaggedTensor:
    """Four samples, some bags empty, some of several values (a value repeated)."""
    lengths = torch.tensor([1, 1, 1, 1, 1, 0, 2, 1, 3, 0, 2, 1])[: 4 * len(keys)]  # feature after feature
    values = torch.tensor([3, 7, 7, 1, 9, 4, 4, 2, 11, 5, 6, 7, 8, 9])[: int(lengths.sum())]
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=lengths)


@pytest.mark.parametrize(
    ("features", "keys", "regrouped"),
    [
        (FEATURES, FEATURES, False),  # the tables' own order
        (FEATURES[:2], FEATURES, False),  # the leading features of a wider batch (the id biases)
        (FEATURES, ["genres", "user_id", "item_id"], True),  # another order: TorchRec's own path
    ],
)
def test_pooled_values_and_the_fused_update_match_torchrec_s(features, keys, regrouped, monkeypatch):
    theirs, ours = both(features)
    kjt = batch(keys)
    expected = theirs(kjt)
    if not regrouped:  # TorchRec's path splits the batch per feature; the direct one must not

        def split(*_):
            raise AssertionError("regrouped")

        monkeypatch.setattr(KeyedJaggedTensor, "to_dict", split)
    found = ours(kjt)
    assert found.keys() == expected.keys()
    assert found.length_per_key() == expected.length_per_key()
    torch.testing.assert_close(found.values(), expected.values(), atol=0, rtol=0)
    given = torch.randn_like(expected.values())
    torch.autograd.backward(expected.values(), given)
    torch.autograd.backward(found.values(), given)
    for (key, before), after in zip(theirs.state_dict().items(), ours.state_dict().values(), strict=True):
        torch.testing.assert_close(after, before, atol=1e-7, rtol=0, msg=key)
