"""The modules inside a serving artifact: the trained model as plain PyTorch, with no TorchRec and no dlrm_cli
needed to load it.

Legend: B batch, Dn dense features, F sparse features, Dc numeric context columns, L values of a column.
``IdServingDLRM``: ``model(users, items) -> (scores, user_known, item_known)``; raw ids in, the ids' rows and
features looked up inside from buffers, then ``ServingDLRM`` scores them. ``ContextIdServingDLRM`` (a model
with context columns) also takes ``context_dense`` (B x Dc raw values) and ``context_rows`` (per categorical
column, B x L vocabulary rows); each left out takes its columns' defaults.
``ServingDLRM``: ``model(dense, ids, offsets) -> scores``; dense B x Dn, and per sparse feature the embedding
rows of the whole batch concatenated, with each sample's start offset.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dlrm_cli.data.catalog import Catalog, EntityTable, FeatureSource
from dlrm_cli.data.context import ContextRows, ContextTable
from dlrm_cli.data.lookup import dense_values, offsets_of, one_each, side_values
from dlrm_cli.model.dlrm import BIAS_COLUMNS, DLRMArches, Member, RatingDLRM, bias_name, table_name, to_rating


class ServingDLRM(nn.Module):
    """``RatingDLRM``'s computation for one head over plain tensors instead of a KeyedJaggedTensor: the
    tables as ``nn.EmbeddingBag`` copies, then the same ``DLRMArches.head_logits``."""

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
        # The same arches and the same ``head_logits`` as the trained model, with this head's output row only
        # (in each model of an ensemble).
        dense_arch, inter_arch = (copy.deepcopy(arch) for arch in (model.dlrm.dense_arch, model.dlrm.inter_arch))
        dropout = model.config.dropout
        members = [
            Member(
                copy.deepcopy(member.dense_arch),
                copy.deepcopy(member.inter_arch),
                _one_head(member.over_arch, index),
                dropout,
            )
            for member in model.dlrm.members
        ]
        self.dlrm = DLRMArches(None, dense_arch, inter_arch, _one_head(model.dlrm.over_arch, index), dropout, members)
        low, span = model.head_scale(head)
        self.rating_min = float(low)
        self.rating_span = float(span)
        self.requires_grad_(False)

    def forward(self, dense: torch.Tensor, ids: list[torch.Tensor], offsets: list[torch.Tensor]) -> torch.Tensor:
        pooled = []
        for index, bag in enumerate(self.bags):
            pooled.append(bag(ids[index], offsets[index]))
        sparse = torch.stack(pooled, dim=1)
        if len(self.biases) == 0:
            logits = self.dlrm.head_logits(dense, sparse, None)
        else:
            biases = []
            for feature, bias in enumerate(self.biases):
                biases.append(bias(ids[feature], offsets[feature]))
            # B x I x 1 x BIAS_COLUMNS: each id feature's bias row for the one head served
            logits = self.dlrm.head_logits(dense, sparse, torch.stack(biases, dim=1).unsqueeze(2))
        return to_rating(logits.squeeze(1), self.rating_min, self.rating_span)


def _one_head(over_arch: nn.Module, index: int) -> nn.Module:
    """A copy of a top MLP with the output row of head ``index`` only."""
    over_arch = copy.deepcopy(over_arch)
    output = [module for module in over_arch.modules() if isinstance(module, nn.Linear)][-1]
    output.weight = nn.Parameter(output.weight.detach()[index : index + 1].clone())
    output.bias = nn.Parameter(output.bias.detach()[index : index + 1].clone())
    output.out_features = 1
    return over_arch


class _Feature(nn.Module):
    """One sparse feature of an ids artifact: its values and EmbeddingBag offsets for a batch of (user row,
    item row) pairs, cut as ``Catalog.batch`` cuts them (``dlrm_cli.data.lookup``).

    ``kind`` as in ``FeatureSource``: ``id`` (``rows``: the owner's id-table row of each entity row), ``side``
    (``rows``: E x L embedding rows padded with ``PAD``) or ``bag``, pooled (``pool_bags``): the entity's own
    row, one value each."""

    def __init__(self, source: FeatureSource, catalog: Catalog) -> None:
        super().__init__()
        table = catalog.owner(source.owner)
        self.of_items = source.owner == "items"
        self.is_bag = source.kind == "bag"
        if source.kind == "id":
            rows = table.id_rows.unsqueeze(1)
        elif source.kind == "side":
            rows = table.sparse[source.name]
        else:
            rows = torch.empty(0, 1, dtype=torch.int64)
        self.register_buffer("rows", rows.clone())
        # Decided once for the whole table: an artifact's shapes may not depend on the values in a batch.
        self.single = bool(rows.shape[1] == 1 and bool((rows >= 0).all()))

    def forward(self, user_rows: torch.Tensor, item_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        owned = item_rows if self.of_items else user_rows
        if self.is_bag:
            return owned, offsets_of(one_each(owned))
        values, lengths = side_values(self.rows[owned], self.single)
        return values, offsets_of(lengths)


class _Entities(nn.Module):
    """The raw ids of one kind of entity, their rows, and each row's features, as buffers.

    ``keys`` are the ids sorted (integer ids), or their positions in the vocabulary (string ids), so that a
    binary search maps an id to its row; an id not there takes ``fallback``: the neutral row (out of
    vocabulary) where the checkpoint has one, as ``dlrm predict`` does."""

    def __init__(self, table: EntityTable) -> None:
        super().__init__()
        keys = torch.from_numpy(table.keys) if table.integer_ids else torch.arange(len(table.keys))
        self.register_buffer("keys", keys.to(torch.int64).clone())
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
        if catalog.normalised_bags:
            raise ValueError("an ids artifact holds its bags pooled: pass the catalog of a loaded model")
        self.scorer = scorer
        self.users = _Entities(catalog.users)
        self.items = _Entities(catalog.items)
        sources = [source for source in catalog.feature_sources if source.kind != "context"]  # context: last
        self.features = nn.ModuleList(_Feature(source, catalog) for source in sources)
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
        dense = dense_values(self.users.dense, self.items.dense, user_rows, item_rows)
        ids, offsets = [], []
        for feature in self.features:
            values, starts = feature(user_rows, item_rows)
            ids.append(values)
            offsets.append(starts)
        return self.scorer(dense, ids, offsets), user_known, item_known


class _DefaultRows(nn.Module):
    """A categorical context column's default value as vocabulary rows (1 x L)."""

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("rows", rows.clone())


class _Context(nn.Module):
    """The context columns of an ids artifact. Numeric values come in raw and are standardised here with the
    training mean and deviation, as ``ContextTable.encode`` does (NaN: the column's default); categorical ones
    come in as vocabulary rows. Inputs left out (None) take every column's default."""

    def __init__(self, table: ContextTable) -> None:
        super().__init__()
        defaults = table.parse(None)[0]
        self.register_buffer("mean", torch.tensor(table.mean, dtype=torch.float64).reshape(1, -1))
        self.register_buffer("std", torch.tensor(table.std, dtype=torch.float64).reshape(1, -1))
        self.register_buffer("default_dense", defaults.dense.to(torch.float32).clone())
        self.columns = nn.ModuleList(_DefaultRows(defaults.sparse[name]) for name in table.vocabularies)

    def forward(
        self, batch: int, dense: torch.Tensor | None, rows: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if dense is None:
            standardised = self.default_dense.expand(batch, -1)
        else:
            if dense.dim() != 2 or dense.shape[1] != self.mean.shape[1]:
                raise ValueError("context_dense must be B x (numeric context columns)")
            raw = dense.to(torch.float64)
            standardised = torch.nan_to_num((raw - self.mean) / self.std, nan=0.0).to(torch.float32)
        if rows is not None and len(rows) != len(self.columns):
            raise ValueError("context_rows must hold one tensor per categorical context column")
        picked: list[torch.Tensor] = []
        for index, column in enumerate(self.columns):
            if rows is None:
                picked.append(column.rows.expand(batch, -1))
            else:
                picked.append(rows[index])
        return standardised, picked


class ContextIdServingDLRM(IdServingDLRM):
    """``IdServingDLRM`` for a model with context columns: the moment of each pair comes in too, as
    ``context_dense`` (B x Dc raw numeric values) and ``context_rows`` (per categorical column, B x L
    vocabulary rows, ``PAD`` after a row's values), each optional (None: its columns' defaults)."""

    def __init__(self, scorer: nn.Module, catalog: Catalog) -> None:
        super().__init__(scorer, catalog)
        assert catalog.context is not None
        self.context = _Context(catalog.context)
        self.requires_grad_(False)

    def forward(  # type: ignore[override]
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        context_dense: torch.Tensor | None = None,
        context_rows: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        user_rows, user_known = self.users(users)
        item_rows, item_known = self.items(items)
        moment, picked = self.context(users.shape[0], context_dense, context_rows)
        dense = torch.cat((dense_values(self.users.dense, self.items.dense, user_rows, item_rows), moment), dim=1)
        ids, offsets = [], []
        for feature in self.features:
            values, starts = feature(user_rows, item_rows)
            ids.append(values)
            offsets.append(starts)
        for rows in picked:  # the categorical context columns: the last sparse features
            values, lengths = side_values(rows, False)
            ids.append(values)
            offsets.append(offsets_of(lengths))
        return self.scorer(dense, ids, offsets), user_known, item_known


def id_module(scorer: nn.Module, catalog: Catalog) -> nn.Module:
    """The ids artifact's module around ``scorer``: with context inputs where the model has context columns,
    else the call of a model without them, unchanged."""
    if catalog.context is not None:
        return ContextIdServingDLRM(scorer, catalog).eval()
    return IdServingDLRM(scorer, catalog).eval()


def plain_inputs(
    catalog: Catalog, user_rows: torch.Tensor, item_rows: torch.Tensor, context: ContextRows | None = None
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The serving inputs for B (user, item) pairs, cut from the same KJT the training model sees;
    ``context`` as ``Catalog.batch``'s."""
    dense, kjt = catalog.batch(user_rows, item_rows, context=context)
    ids, offsets = [], []
    for jagged in kjt.to_dict().values():
        ids.append(jagged.values())
        offsets.append(jagged.offsets()[:-1].contiguous())
    return dense, ids, offsets
