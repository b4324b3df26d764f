"""The modules inside a serving artifact: the trained model as plain PyTorch, with no TorchRec and no dlrm_cli
needed to load it.

Legend: B batch, Dn dense features, F sparse features.
``IdServingDLRM``: ``model(users, items) -> (scores, user_known, item_known)``; raw ids in, the ids' rows and
features looked up inside from buffers, then ``ServingDLRM`` scores them.
``ServingDLRM``: ``model(dense, ids, offsets) -> scores``; dense B x Dn, and per sparse feature the embedding
rows of the whole batch concatenated, with each sample's start offset.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dlrm_cli.data.catalog import Catalog, EntityTable
from dlrm_cli.model.dlrm import BIAS_COLUMNS, RatingDLRM, bias_name, table_name, to_rating


class ServingDLRM(nn.Module):
    """The same computation as ``RatingDLRM`` over plain tensors instead of a KeyedJaggedTensor."""

    def __init__(self, model: RatingDLRM, head: str = "") -> None:
        super().__init__()
        head = head or model.config.heads[0]
        index = model.config.heads.index(head)
        ebc = model.dlrm.sparse_arch.embedding_bag_collection
        self.bags = nn.ModuleList(
            nn.EmbeddingBag.from_pretrained(ebc.embedding_bags[table_name(feature)].weight.detach().clone(), mode="sum")
            for feature in model.config.feature_names
        )
        # The id biases, added to the logit: a table for each of the first features (user_id, item_id).
        features = model.config.feature_names
        biased = [features.index(table.feature) for table in model.config.bias_tables]
        if biased != list(range(len(biased))):
            raise ValueError(f"the biased features must come first, got positions {biased}")
        # An artifact serves one head (by default the first: the rating, or a ranking-only model's
        # probability): its columns of the bias tables and its row of the output layer.
        columns = slice(index * BIAS_COLUMNS, (index + 1) * BIAS_COLUMNS)
        self.biases = nn.ModuleList(
            nn.EmbeddingBag.from_pretrained(
                model.biases.embedding_bags[bias_name(table.feature)].weight.detach()[:, columns].clone(),
                mode="sum",
            )
            for table in model.config.bias_tables
        )
        self.dense_arch = copy.deepcopy(model.dlrm.dense_arch)
        self.inter_arch = copy.deepcopy(model.dlrm.inter_arch)
        self.over_arch = copy.deepcopy(model.dlrm.over_arch)
        output = [module for module in self.over_arch.modules() if isinstance(module, nn.Linear)][-1]
        output.weight = nn.Parameter(output.weight.detach()[index : index + 1].clone())
        output.bias = nn.Parameter(output.bias.detach()[index : index + 1].clone())
        output.out_features = 1
        low, span = model.head_scale(head)
        self.rating_min = float(low)
        self.rating_span = float(span)
        self.requires_grad_(False)

    def forward(self, dense: torch.Tensor, ids: list[torch.Tensor], offsets: list[torch.Tensor]) -> torch.Tensor:
        pooled = []
        for index, bag in enumerate(self.bags):
            pooled.append(bag(ids[index], offsets[index]))
        sparse = torch.stack(pooled, dim=1)
        logits = self.over_arch(self.inter_arch(self.dense_arch(dense), sparse)).squeeze(1)
        for feature, bias in enumerate(self.biases):
            logits = logits + bias(ids[feature], offsets[feature]).sum(dim=1)
        return to_rating(logits, self.rating_min, self.rating_span)


class _SparseFeature(nn.Module):
    """One sparse feature of one kind of entity: each entity row's embedding rows, padded with ``PAD``."""

    def __init__(self, matrix: torch.Tensor, of_items: bool) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix.clone())
        self.of_items = of_items
        self.single = bool(matrix.shape[1] == 1 and bool((matrix >= 0).all()))

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The feature's ids and EmbeddingBag offsets for a batch of entity rows."""
        picked = self.matrix[rows]
        if self.single:
            return picked[:, 0], torch.arange(rows.shape[0], dtype=torch.int64, device=rows.device)
        present = picked >= 0
        lengths = present.sum(dim=1)
        return picked[present], torch.cumsum(lengths, dim=0) - lengths


class _Entities(nn.Module):
    """The raw ids of one kind of entity, their rows, and each row's features, as buffers.

    ``keys`` are the ids sorted (integer ids), or their positions in the vocabulary (string ids), so that a
    binary search maps an id to its row; an id not there takes ``fallback``: the neutral row (out of
    vocabulary) where the checkpoint has one, as ``dlrm predict`` does."""

    def __init__(self, table: EntityTable) -> None:
        super().__init__()
        keys = torch.from_numpy(table.keys) if table.integer_ids else torch.arange(len(table.keys))
        self.register_buffer("keys", keys.to(torch.int64).clone())
        self.register_buffer("id_rows", table.id_rows.clone())
        self.register_buffer("dense", table.dense.clone())
        self.fallback = table.neutral_row if table.neutral_row is not None else 0

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows for raw ids, and which of the ids are known."""
        found = torch.searchsorted(self.keys, ids).clamp(max=self.keys.shape[0] - 1)
        known = self.keys[found] == ids
        return torch.where(known, found, torch.full_like(found, self.fallback)), known


class IdServingDLRM(nn.Module):
    """Raw user and item ids in, ratings out: the ids' rows and features are looked up inside, then
    ``scorer`` (a ``ServingDLRM``, or its int8 twin) rates them."""

    def __init__(self, scorer: nn.Module, catalog: Catalog) -> None:
        super().__init__()
        self.scorer = scorer
        self.users = _Entities(catalog.users)
        self.items = _Entities(catalog.items)
        self.sparse = nn.ModuleList(
            [_SparseFeature(matrix, False) for matrix in catalog.users.sparse.values()]
            + [_SparseFeature(matrix, True) for matrix in catalog.items.sparse.values()]
        )
        if catalog.normalised_bags:
            raise ValueError("an ids artifact holds its bags pooled: pass the catalog of a loaded model")
        # Each pooled bag is looked up by its entity's own row (``pool_bags``): the users' bags, then the items'.
        self.user_bags, self.item_bags = len(catalog.users.bags), len(catalog.items.bags)
        self.requires_grad_(False)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            users, items: int64 tensors of size B, raw ids (string ids: their positions in the vocabulary).

        Returns:
            the B predicted ratings, and for each of the B users and items whether the checkpoint knew it.
        """
        user_rows, user_known = self.users(users)
        item_rows, item_known = self.items(items)
        dense = torch.cat((self.users.dense[user_rows], self.items.dense[item_rows]), dim=1)
        batch = torch.arange(users.shape[0], dtype=torch.int64, device=users.device)
        ids = [self.users.id_rows[user_rows], self.items.id_rows[item_rows]]
        offsets = [batch, batch]
        for feature in self.sparse:
            values, starts = feature(item_rows if feature.of_items else user_rows)
            ids.append(values)
            offsets.append(starts)
        for _ in range(self.user_bags):
            ids.append(user_rows)
            offsets.append(batch)
        for _ in range(self.item_bags):
            ids.append(item_rows)
            offsets.append(batch)
        return self.scorer(dense, ids, offsets), user_known, item_known


def plain_inputs(
    catalog: Catalog, user_rows: torch.Tensor, item_rows: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The serving inputs for B (user, item) pairs, cut from the same KJT the training model sees."""
    dense, kjt = catalog.batch(user_rows, item_rows)
    ids, offsets = [], []
    for jagged in kjt.to_dict().values():
        ids.append(jagged.values())
        offsets.append(jagged.offsets()[:-1].contiguous())
    return dense, ids, offsets
