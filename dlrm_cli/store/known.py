"""What a checkpoint keeps of its training data so that it travels without it: each user's items in the
training rows (what recommending leaves out) and the held-out pairs that export checks its artifact on.
Only ``evaluate`` reads the data itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dlrm_cli.data.catalog import Ratings
from dlrm_cli.errors import CorruptCheckpoint, DataError
from dlrm_cli.retrieval.history import History

if TYPE_CHECKING:
    from dlrm_cli.data.catalog import Dataset
    from dlrm_cli.store.checkpoints import Checkpoint

KNOWN_FILE = "known.pt"
PARITY_PAIRS = 1024  # export's check scores this many held-out pairs on the artifact and on the checkpoint


@dataclass(frozen=True)
class Known:
    """The training rows' (user row, item row) pairs, and the first ``PARITY_PAIRS`` test ratings."""

    seen: History
    parity_users: torch.Tensor
    parity_items: torch.Tensor
    parity_ratings: torch.Tensor

    @property
    def held_out(self) -> Ratings:
        return Ratings(self.parity_users, self.parity_items, self.parity_ratings)

    @classmethod
    def of(cls, dataset: Dataset) -> Known:
        train, held_out, catalog = dataset.train, dataset.test, dataset.catalog
        seen = History.of_pairs(train.user, train.item, len(catalog.users) + 1, len(catalog.items) + 1)
        rows = min(len(held_out), PARITY_PAIRS)
        kept = held_out.subset(torch.arange(rows))
        return cls(seen, kept.user, kept.item, kept.rating)

    def state(self) -> dict[str, Any]:
        """Item rows as int32 (half the file of int64 at tens of millions of ratings)."""
        return {
            "offsets": self.seen.offsets,
            "items": self.seen.items.to(torch.int32),
            "n_items": self.seen.n_items,
            "parity_users": self.parity_users,
            "parity_items": self.parity_items,
            "parity_ratings": self.parity_ratings,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Known:
        seen = History(state["offsets"].to(torch.int64), state["items"].to(torch.int64), int(state["n_items"]))
        users, items = state["parity_users"].to(torch.int64), state["parity_items"].to(torch.int64)
        ratings = state["parity_ratings"].to(torch.float32)
        if not len(users) == len(items) == len(ratings):
            raise ValueError("parity pairs of unequal lengths")
        return cls(seen, users, items, ratings)


def known_of(checkpoint: Checkpoint, n_users: int, n_items: int) -> Known:
    """A checkpoint's known pairs: from its own file, or, for a checkpoint written before dlrm kept them
    (formats 1 to 5), from its training data, which must then still be where it was trained."""
    if KNOWN_FILE not in checkpoint.meta.get("files", {}):
        from dlrm_cli.data.sources import load_dataset

        try:
            return Known.of(load_dataset(checkpoint.run.data))
        except DataError as error:
            raise DataError(
                f"checkpoint {checkpoint.name} was written by an older dlrm that kept no copy of its users' "
                f"training items, so it needs its training data here: {error}"
            ) from None
    try:
        known = Known.from_state(checkpoint.tensors(KNOWN_FILE))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CorruptCheckpoint(f"checkpoint {checkpoint.name} is corrupt: {KNOWN_FILE} ({error})") from None
    seen = known.seen
    shape_fits = (seen.n_users, seen.n_items) == (n_users, n_items) and int(seen.offsets[-1]) == len(seen.items)
    items = torch.cat((seen.items, known.parity_items))
    if not (shape_fits and _within(items, n_items) and _within(known.parity_users, n_users)):
        raise CorruptCheckpoint(f"checkpoint {checkpoint.name} is corrupt: {KNOWN_FILE} does not fit its catalog")
    return known


def _within(rows: torch.Tensor, size: int) -> bool:
    return len(rows) == 0 or (int(rows.min()) >= 0 and int(rows.max()) < size)
