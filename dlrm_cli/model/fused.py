"""TorchRec's fused tables, fed straight from a KJT whose keys already come in the tables' order.

``FusedEmbeddingBagCollection.forward`` splits its input into one jagged tensor per feature and joins them
again in table order before its FBGEMM kernel: on the CPU about 0.1 ms a call whatever the batch, which a
training step of 256 ratings pays twice (the tables, the id biases). dlrm's batches list the features in
the tables' own order (``Catalog.batch``), the id features first, so the kernel can take the KJT's values
and offsets as they are: all of them for the tables, the leading id features' for the biases. Any other
KJT takes TorchRec's own path. Weights, optimizer and state-dict keys are TorchRec's, unchanged.
"""

from __future__ import annotations

from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor


class OrderedFusedEmbeddingBagCollection(FusedEmbeddingBagCollection):
    """A ``FusedEmbeddingBagCollection`` that skips the regrouping when the KJT's leading keys are its
    features in table order."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._in_order = [name for config in self._embedding_bag_configs for name in config.feature_names]
        self._one_kernel = len(self._emb_modules) == 1 and not self._is_weighted

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        keys, count = features.keys(), len(self._in_order)
        if not self._one_kernel or features.variable_stride_per_key() or keys[:count] != self._in_order:
            return super().forward(features)
        offsets = features.offsets()
        values = features.values()
        if count < len(keys):  # the leading features only
            offsets = offsets[: count * features.stride() + 1]
            values = values[: int(offsets[-1])]
        pooled = self._emb_modules[0](values.int(), offsets.int(), None)
        return KeyedTensor(keys=self._embedding_names, values=pooled, length_per_key=self._length_per_key)
