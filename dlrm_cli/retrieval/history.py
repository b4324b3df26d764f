"""Each user's known items: the interactions a checkpoint learned from, kept in its file so that recommending,
serving and exporting never re-read the training data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def pair_keys(users: torch.Tensor, items: torch.Tensor, n_items: int) -> torch.Tensor:
    """One int64 per (user row, item row) pair, ascending with the user row, then the item row."""
    return users.to(torch.int64) * n_items + items.to(torch.int64)


@dataclass(frozen=True)
class History:
    """Known (user row, item row) pairs as compressed rows: user ``u``'s items are
    ``items[offsets[u]:offsets[u + 1]]``, sorted. Legend: U user rows, I item rows, B users asked about."""

    offsets: torch.Tensor  # U + 1, int64
    items: torch.Tensor  # int64
    n_items: int

    @classmethod
    def of_pairs(cls, users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int) -> History:
        """The history of ``(users[k], items[k])`` pairs (repeats kept once)."""
        return cls.of_keys(torch.unique(pair_keys(users, items, n_items)), n_users, n_items)

    @classmethod
    def of_keys(cls, keys: torch.Tensor, n_users: int, n_items: int) -> History:
        """The history of the pairs whose ``pair_keys`` are ``keys``, distinct and ascending."""
        rows = torch.div(keys, n_items, rounding_mode="floor")
        counts = torch.bincount(rows, minlength=n_users)
        offsets = torch.cat((torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)))
        return cls(offsets, keys % n_items, n_items)

    @property
    def n_users(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def of(self, user: int) -> torch.Tensor:
        """User row ``user``'s items, sorted."""
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def counts(self) -> torch.Tensor:
        """U: how many items each user row has."""
        return self.offsets[1:] - self.offsets[:-1]

    def item_counts(self) -> torch.Tensor:
        """I: how many users have each item row (counted once, then kept: a history does not change)."""
        counts = self.__dict__.get("_item_counts")
        if counts is None:
            counts = torch.bincount(self.items, minlength=self.n_items)
            object.__setattr__(self, "_item_counts", counts)
        return counts

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every known pair as (user rows, item rows)."""
        users = torch.repeat_interleave(torch.arange(self.n_users), self.counts())
        return users, self.items

    def matrix(self, users: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        """B x I float32, 1 where the user knows the item (or the pair's own value, ``values`` being one per
        known pair in this history's order)."""
        lengths = self.offsets[users + 1] - self.offsets[users]
        starts = torch.repeat_interleave(self.offsets[users] - (torch.cumsum(lengths, 0) - lengths), lengths)
        index = starts + torch.arange(int(lengths.sum()))
        rows = torch.repeat_interleave(torch.arange(users.shape[0]), lengths)
        out = torch.zeros(users.shape[0], self.n_items)
        out[rows, self.items[index]] = 1.0 if values is None else values[index]
        return out

    def sparse(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """U x I sparse COO matrix of ones (or of ``values``, as ``matrix`` takes them)."""
        users, items = self.pairs()
        values = torch.ones(len(items)) if values is None else values.float()
        shape = (self.n_users, self.n_items)
        return torch.sparse_coo_tensor(torch.stack((users, items)), values, shape, check_invariants=False).coalesce()

    def without(self, users: torch.Tensor, items: torch.Tensor) -> History:
        """This history less the given pairs."""
        own_users, own_items = self.pairs()
        dropped = torch.isin(pair_keys(own_users, own_items, self.n_items), pair_keys(users, items, self.n_items))
        return History.of_pairs(own_users[~dropped], own_items[~dropped], self.n_users, self.n_items)

    def state(self) -> dict[str, Any]:
        return {"offsets": self.offsets, "items": self.items, "n_items": self.n_items}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> History:
        return cls(state["offsets"], state["items"], int(state["n_items"]))
