"""Feature tables and rating splits, kept as tensors built once, and batches cut from them by indexing.

Legend for shapes: N ratings, B batch, E entities (users or items), L values of a multi-valued feature.
Every user and every item owns its feature values, so a batch needs only user rows and item rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_cli.data.context import ContextRows, ContextTable
from dlrm_cli.data.lookup import dense_values, one_each, side_values

if TYPE_CHECKING:
    from dlrm_cli.config import DataSource

PAD = -1  # fills the unused slots of a multi-valued feature
BAG_FEATURES = {"user": "rated_items", "item": "raters"}  # each kind's implicit-feedback bag, as a sparse feature


@dataclass
class Bag:
    """A multi-valued feature stored jagged, one bag per entity row: row r holds
    ``values[offsets[r]:offsets[r + 1]]``, rows of the other kind's id table (a user's bag holds the items it
    rated in training, an item's bag the users who rated it). The neutral row's bag is empty.

    A ``normalised`` bag is pooled as its sum divided by ``sqrt(n)`` (SVD++'s ``|N(u)|^-1/2``): the model
    scales the sum (``TableConfig.bag``). A pooled bag (``pool_bags``) holds one value per entity, its
    own row in a table of its pooled embeddings.
    """

    values: torch.Tensor
    offsets: torch.Tensor
    table_rows: int
    normalised: bool = True

    @classmethod
    def build(cls, owners: np.ndarray, members: np.ndarray, n_owners: int, table_rows: int) -> Bag:
        """The bags of ``n_owners`` entity rows from (owner row, member id row) pairs, each bag sorted."""
        order = np.lexsort((members, owners))
        counts = np.bincount(owners, minlength=n_owners)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return cls(torch.from_numpy(members[order].astype(np.int64)), torch.from_numpy(offsets), table_rows)

    @classmethod
    def pooled(cls, n_rows: int) -> Bag:
        rows = torch.arange(n_rows, dtype=torch.int64)
        return cls(rows, torch.arange(n_rows + 1, dtype=torch.int64), n_rows, normalised=False)

    def capped(self, cap: int, seed: int) -> Bag:
        """The bag with every owner of more than ``cap`` members cut to ``cap`` of them drawn uniformly without
        replacement (``seed``), kept sorted; smaller bags unchanged. Each member of a bag of n > cap stays with
        probability cap / n: an unbiased sample, so the kept members' sum times n / cap estimates the full one."""
        sizes = self.offsets.diff()
        if len(sizes) == 0 or int(sizes.max()) <= cap:
            return self
        owners = torch.repeat_interleave(torch.arange(len(sizes)), sizes).numpy()
        keys = torch.rand(len(owners), generator=torch.Generator().manual_seed(seed)).numpy()
        order = np.lexsort((keys, owners))  # each owner's positions, in a random order
        rank = np.arange(len(owners)) - self.offsets.numpy()[owners]  # position within its owner, in that order
        kept = np.sort(order[rank < cap])  # back in owner order, each bag still sorted
        offsets = torch.cat((torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes.clamp(max=cap), 0)))
        return replace(self, values=self.values[torch.from_numpy(kept)], offsets=offsets)

    def sizes(self, rows: torch.Tensor) -> torch.Tensor:
        return self.offsets[rows + 1] - self.offsets[rows]

    def gather(
        self,
        rows: torch.Tensor,
        leave_out: torch.Tensor | None = None,
        skip: torch.Tensor | Literal[True] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The values and lengths of the bags of B entity rows, jagged in batch order. ``leave_out[b]``, when
        given, is dropped from bag b (in training: the rating being learned is no evidence for itself).
        ``skip`` (a flag per owner row, or True for all of them): those owners' bags come out empty (training
        reads them from a cache)."""
        if skip is True:
            return self.values[:0], torch.zeros(rows.shape[0], dtype=self.offsets.dtype)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        if skip is not None:
            lengths = torch.where(skip[rows], 0, lengths)
        total = int(lengths.sum())
        if total == 0:  # every bag skipped or empty: nothing to gather or leave out
            return self.values[:0], lengths
        first = torch.cumsum(lengths, 0) - lengths
        index = torch.repeat_interleave(starts - first, lengths, output_size=total) + torch.arange(total)
        values = self.values[index]
        if leave_out is None:
            return values, lengths
        sample = torch.repeat_interleave(torch.arange(rows.shape[0]), lengths, output_size=total)
        keep = values != leave_out[sample]
        return values[keep], lengths - torch.bincount(sample[~keep], minlength=rows.shape[0])

    def state(self) -> dict[str, object]:
        return {
            "values": self.values,
            "offsets": self.offsets,
            "table_rows": self.table_rows,
            "normalised": self.normalised,
        }

    @classmethod
    def from_state(cls, state: dict) -> Bag:
        return cls(state["values"], state["offsets"], int(state["table_rows"]), bool(state["normalised"]))


@dataclass
class EntityTable:
    """Side features of one kind of entity, one row per known entity.

    ``keys`` are the raw ids in row order, sorted, so that raw ids map to rows by binary search.
    ``id_rows`` gives each entity's row in its id embedding table; entities never seen in training
    share the out-of-vocabulary row 0 when the table has one.
    ``sparse`` maps a feature name to an E x L tensor of embedding rows padded with ``PAD``; ``bags`` maps
    one to a jagged ``Bag`` (E + 1 bags: the neutral row's is empty).
    ``described`` keeps the raw side values shown beside an item (E + 1 each, the neutral row's missing): a
    float64 tensor (NaN: missing) per numeric column, a list of strings ("": missing) per categorical one.
    """

    kind: str
    keys: np.ndarray
    id_rows: torch.Tensor
    dense: torch.Tensor
    dense_names: list[str]
    sparse: dict[str, torch.Tensor] = field(default_factory=dict)
    sparse_sizes: dict[str, int] = field(default_factory=dict)
    titles: list[str] | None = None
    id_table_rows: int = 0
    has_oov: bool = False
    bags: dict[str, Bag] = field(default_factory=dict)
    described: dict[str, torch.Tensor | list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def integer_ids(self) -> bool:
        """True when the ids are integers (MovieLens, synthetic data); False for string ids (CSV)."""
        return self.keys.dtype.kind in "iu"

    @property
    def neutral_row(self) -> int | None:
        """The row used for an id never seen at all: mean dense features, no side values, the OOV id row."""
        return len(self.keys) if self.has_oov else None

    def lookup(self, raw_ids: list[str]) -> tuple[torch.Tensor, list[str]]:
        """Map raw ids (as typed by a user) to entity rows; returns the rows and the ids not known.

        Unknown ids get the neutral row where the table has one, else -1."""
        rows = np.full(len(raw_ids), -1, dtype=np.int64)
        if self.integer_ids:
            parsed = np.array([_as_int(raw) for raw in raw_ids], dtype=object)
            valid = np.array([value is not None for value in parsed], dtype=bool)
            if valid.any():
                rows[valid] = self.rows_for(parsed[valid].astype(np.int64))
        else:
            rows = self.rows_for(np.array(raw_ids, dtype=str))
        unknown = [raw for raw, row in zip(raw_ids, rows, strict=True) if row < 0]
        if self.neutral_row is not None:
            rows[rows < 0] = self.neutral_row
        return torch.from_numpy(rows), unknown

    def rows_for(self, raw_ids: np.ndarray) -> np.ndarray:
        """Entity rows of an array of raw ids, -1 where unknown."""
        if len(self.keys) == 0:
            return np.full(len(raw_ids), -1, dtype=np.int64)
        if self.integer_ids != (raw_ids.dtype.kind in "iu"):
            keys, raw_ids = self.keys.astype(str), raw_ids.astype(str)
            order = np.argsort(keys)
            found = _search(keys[order], raw_ids)
            return np.where(found >= 0, order[np.maximum(found, 0)], -1)
        return _search(self.keys, raw_ids)

    def features_of(self, row: int) -> dict[str, float | str] | None:
        """The raw side values of entity ``row`` that it has, by column; None when it has none."""
        shown: dict[str, float | str] = {}
        for name, values in self.described.items():
            if isinstance(values, torch.Tensor):
                number = float(values[row])
                if math.isfinite(number):
                    shown[name] = number
            elif values[row] and values[row] != "nan":
                shown[name] = values[row]
        return shown or None

    def unseen_in_training(self, rows: torch.Tensor) -> torch.Tensor:
        """A boolean mask of the given entity rows whose id has no trained embedding (the OOV row)."""
        return self.id_rows[rows] == 0 if self.has_oov else torch.zeros_like(rows, dtype=torch.bool)

    def state(self) -> dict[str, object]:
        keys = self.keys.tolist()
        return {
            "kind": self.kind,
            "keys_are_int": self.integer_ids,
            "keys": torch.from_numpy(self.keys) if self.integer_ids else keys,
            "id_rows": self.id_rows,
            "id_table_rows": self.id_table_rows,
            "has_oov": self.has_oov,
            "dense": self.dense,
            "dense_names": list(self.dense_names),
            "sparse": dict(self.sparse),
            "sparse_sizes": dict(self.sparse_sizes),
            "titles": self.titles,
            "bags": {name: bag.state() for name, bag in self.bags.items()},
            "described": dict(self.described),
        }

    @classmethod
    def from_state(cls, state: dict) -> EntityTable:
        keys = state["keys"]
        keys = keys.numpy() if state["keys_are_int"] else np.array(keys, dtype=str)
        return cls(
            kind=state["kind"],
            keys=keys,
            id_rows=state["id_rows"],
            id_table_rows=int(state["id_table_rows"]),
            has_oov=bool(state["has_oov"]),
            dense=state["dense"],
            dense_names=list(state["dense_names"]),
            sparse=dict(state["sparse"]),
            sparse_sizes={k: int(v) for k, v in state["sparse_sizes"].items()},
            titles=state["titles"],
            bags={name: Bag.from_state(bag) for name, bag in state.get("bags", {}).items()},  # none before format 3
            described=_described(state.get("described", {}), len(keys) + 1),  # none before dlrm kept them
        )


def _described(state: dict, rows: int) -> dict[str, torch.Tensor | list[str]]:
    """A saved ``described``, each column checked to hold one value per row."""
    for name, values in state.items():
        if len(values) != rows:
            raise TypeError(f"side values {name!r}: {len(values)} rows for {rows}")
    return dict(state)


def _as_int(raw: str) -> int | None:
    """The integer an id names, or None where it names none that an int64 key could be (an unknown id)."""
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if -(2**63) <= value < 2**63 else None


def _search(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    positions = np.searchsorted(keys, wanted)
    positions = np.minimum(positions, len(keys) - 1)
    found = keys[positions] == wanted
    return np.where(found, positions, -1).astype(np.int64)


@dataclass
class Ratings:
    """N ratings as parallel tensors of user rows, item rows and rating values, and each rating's context
    features where the data has context columns."""

    user: torch.Tensor
    item: torch.Tensor
    rating: torch.Tensor
    context: ContextRows | None = None

    def __len__(self) -> int:
        return int(self.rating.shape[0])

    def subset(self, index: torch.Tensor) -> Ratings:
        return Ratings(self.user[index], self.item[index], self.rating[index], self.context_of(index))

    def context_of(self, index: torch.Tensor) -> ContextRows | None:
        """The context of the ratings at ``index`` (None without context columns)."""
        return None if self.context is None else self.context.take(index)


@dataclass(frozen=True)
class FeatureSource:
    """Where a sparse feature's values come from: its ``owner`` (``users`` or ``items``) and ``kind``: the
    owner's ``id`` row, one of its ``side`` features, or its implicit-feedback ``bag``."""

    name: str
    owner: str
    kind: str


@dataclass
class Catalog:
    """The users and items a model knows, and how their features become model inputs."""

    users: EntityTable
    items: EntityTable
    rating_min: float
    rating_max: float
    implicit: bool = False  # interactions without ratings: every row is a 1 on a 0-1 scale
    context: ContextTable | None = None  # the columns that describe each rating itself

    @property
    def dense_names(self) -> list[str]:
        context = self.context.dense_names if self.context is not None else []
        return [*self.users.dense_names, *self.items.dense_names, *context]

    @property
    def feature_sources(self) -> list[FeatureSource]:
        """Every sparse feature, in the order of the KJT keys and the embedding tables: the ids, the side
        features, the bags (users' before items' in each group), then the categorical context columns."""
        sources = [FeatureSource("user_id", "users", "id"), FeatureSource("item_id", "items", "id")]
        for owner in ("users", "items"):
            sources.extend(FeatureSource(name, owner, "side") for name in self.owner(owner).sparse)
        for owner in ("users", "items"):
            sources.extend(FeatureSource(name, owner, "bag") for name in self.owner(owner).bags)
        if self.context is not None:
            sources.extend(FeatureSource(name, "context", "context") for name in self.context.vocabularies)
        return sources

    def owner(self, owner: str) -> EntityTable:
        """``users`` or ``items``."""
        return self.users if owner == "users" else self.items

    @property
    def sparse_features(self) -> list[tuple[str, int]]:
        """(feature name, embedding rows), in ``feature_sources`` order."""
        rows = []
        for source in self.feature_sources:
            if source.kind == "context":
                rows.append((source.name, self.context.sparse_sizes()[source.name]))  # type: ignore[union-attr]
                continue
            table = self.owner(source.owner)
            if source.kind == "id":
                rows.append((source.name, table.id_table_rows))
            elif source.kind == "side":
                rows.append((source.name, table.sparse_sizes[source.name]))
            else:
                rows.append((source.name, table.bags[source.name].table_rows))
        return rows

    @property
    def normalised_bags(self) -> list[str]:
        """The features whose pooled sums the model divides by sqrt(n) (``TableConfig.bag``)."""
        return [name for table in (self.users, self.items) for name, bag in table.bags.items() if bag.normalised]

    @property
    def user_side(self) -> list[str]:
        """The sparse features that describe the user (the rest describe the item)."""
        return ["user_id", *self.users.sparse, *self.users.bags]

    def batch(
        self,
        user_rows: torch.Tensor,
        item_rows: torch.Tensor,
        leave_out: bool = False,
        user_side_rows: int | None = None,
        pair_dense: torch.Tensor | None = None,
        context: ContextRows | None = None,
        cached: dict[str, torch.Tensor | Literal[True]] | None = None,
    ) -> tuple[torch.Tensor, KeyedJaggedTensor]:
        """Model inputs for B (user, item) pairs: dense features B x (du + di [+ dc] [+ dp]) and a KJT of the
        sparse ones. ``context``: each pair's context features (B rows; None: every column at its default),
        for a catalog with context columns. ``pair_dense`` (B x dp): features of each pair itself (a ranking
        stage's retrieval features), after the user's, the item's and the context's.
        ``leave_out`` (training) drops each pair's item from its user's bag and its user from its item's
        bag, so that a rating is never evidence for itself. ``user_side_rows`` = n: only the first n pairs
        carry their user-side sparse features (``user_side``); the others, whose users repeat the first n
        in order (sampled negatives), get none, and the model borrows them (``RatingDLRM.training_outputs``).
        ``cached`` maps a bag feature to a flag per owner row (or True for every owner): those bags are left
        empty, for a training cache of their pooled sums (``dlrm_cli.training.bag_cache``)."""
        dense = dense_values(self.users.dense, self.items.dense, user_rows, item_rows)
        if self.context is not None:
            if context is None:
                context = self.context.parse(None)[0].expand(user_rows.shape[0])
            dense = torch.cat((dense, context.dense.to(dense.dtype)), dim=1)
        if pair_dense is not None:
            dense = torch.cat((dense, pair_dense.to(dense.dtype)), dim=1)
        user_ids = self.users.id_rows.index_select(0, user_rows)
        item_ids = self.items.id_rows.index_select(0, item_rows)
        rows = {"users": user_rows if user_side_rows is None else user_rows[:user_side_rows], "items": item_rows}
        others = {"users": item_ids, "items": user_ids}  # each pair's other side, left out of its bag
        absent = torch.zeros(user_rows.shape[0] - rows["users"].shape[0], dtype=torch.int64)
        values, lengths = [], []
        for source in self.feature_sources:
            if source.kind == "context":
                picked = context.sparse[source.name]  # type: ignore[union-attr]
                cut = side_values(picked, picked.shape[1] == 1 and bool((picked >= 0).all()))
                values.append(cut[0])
                lengths.append(cut[1])
                continue
            table, owned = self.owner(source.owner), rows[source.owner]
            if source.kind == "id":
                cut = (table.id_rows.index_select(0, owned), one_each(owned))
            elif source.kind == "side":
                picked = table.sparse[source.name].index_select(0, owned)
                cut = side_values(picked, picked.shape[1] == 1 and bool((picked >= 0).all()))
            else:
                left_out = others[source.owner][: owned.shape[0]] if leave_out else None
                skip = cached.get(source.name) if cached else None
                cut = table.bags[source.name].gather(owned, left_out, skip)
            values.append(cut[0])
            # the borrowing pairs' user side: no values (padded with their zero lengths)
            lengths.append(torch.cat((cut[1], absent)) if source.owner == "users" and len(absent) else cut[1])
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=[source.name for source in self.feature_sources],
            values=torch.cat(values),
            lengths=torch.cat(lengths),
        )
        return dense, kjt

    def without_context(self) -> Catalog:
        """The catalog of a model that reads no context columns (a two-stage checkpoint's ranker)."""
        return replace(self, context=None)

    def without_bags(self) -> Catalog:
        """The catalog of a model trained without the implicit-feedback bags."""
        return replace(self, users=replace(self.users, bags={}), items=replace(self.items, bags={}))

    def state(self) -> dict[str, object]:
        return {
            "users": self.users.state(),
            "items": self.items.state(),
            "rating_min": self.rating_min,
            "rating_max": self.rating_max,
            "implicit": self.implicit,
            **({"context": self.context.state()} if self.context is not None else {}),
        }

    @classmethod
    def from_state(cls, state: dict) -> Catalog:
        return cls(
            users=EntityTable.from_state(state["users"]),
            items=EntityTable.from_state(state["items"]),
            rating_min=float(state["rating_min"]),
            rating_max=float(state["rating_max"]),
            implicit=bool(state.get("implicit", False)),
            context=ContextTable.from_state(state["context"]) if state.get("context") else None,
        )


@dataclass
class Dataset:
    """A catalog with its train, validation and test ratings, and a description of where they came from."""

    catalog: Catalog
    train: Ratings
    validation: Ratings
    test: Ratings
    source: DataSource
    expected: dict[str, torch.Tensor] = field(default_factory=dict)
    """For synthetic data: the rating a perfect model predicts for each row of each split."""

    def split(self, name: str) -> Ratings:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    @property
    def global_mean(self) -> float:
        return float(self.train.rating.mean())


def with_bags(dataset: Dataset, cap: int | None = None, seed: int = 0) -> Dataset:
    """The data set with each user's and each item's implicit-feedback bag, from its training rows only: the
    items a user rated (SVD++'s N(u)) and the users who rated an item (Rendle et al. 2019's "flipped" bag).
    ``cap``: a bag of more members keeps a uniform random ``cap`` of them (``Bag.capped``, drawn with ``seed``)."""
    catalog, train = dataset.catalog, dataset.train
    users, items = catalog.users, catalog.items
    user_rows, item_rows = train.user.numpy(), train.item.numpy()
    user_bag = Bag.build(user_rows, items.id_rows.numpy()[item_rows], len(users) + 1, items.id_table_rows)
    item_bag = Bag.build(item_rows, users.id_rows.numpy()[user_rows], len(items) + 1, users.id_table_rows)
    if cap is not None:
        user_bag, item_bag = user_bag.capped(cap, seed), item_bag.capped(cap, seed + 1)
    users = replace(users, bags={BAG_FEATURES["user"]: user_bag})
    items = replace(items, bags={BAG_FEATURES["item"]: item_bag})
    return replace(dataset, catalog=replace(catalog, users=users, items=items))
