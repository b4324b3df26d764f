"""Entity rows to model inputs: the cuts that a training or scoring batch (``Catalog.batch``) and an ids
serving artifact (``dlrm_cli.serving.artifact.IdServingDLRM``) share, so that the two cannot disagree.

Both go through the sparse features in the order ``Catalog.feature_sources`` gives and cut each one here.
TorchScript compiles these functions into artifacts, so this module keeps its annotations plain
(no ``from __future__ import annotations``; ``typing.Tuple``).
"""

from typing import Tuple  # noqa: UP035

import torch


def dense_values(
    user_dense: torch.Tensor, item_dense: torch.Tensor, user_rows: torch.Tensor, item_rows: torch.Tensor
) -> torch.Tensor:
    """B x (du + di): each pair's user features, then its item features. The rows: 1-D, none negative."""
    return torch.cat((user_dense.index_select(0, user_rows), item_dense.index_select(0, item_rows)), dim=1)


def one_each(rows: torch.Tensor) -> torch.Tensor:
    """The lengths of a feature with exactly one value per sample: ones, size B."""
    return torch.ones(rows.shape[0], dtype=torch.int64, device=rows.device)


def side_values(picked: torch.Tensor, single: bool) -> Tuple[torch.Tensor, torch.Tensor]:  # noqa: UP006
    """A side feature's values and lengths for B samples, from its B x L rows of embedding rows padded with
    ``PAD`` (-1). ``single``: every sample has exactly one value (L = 1, no padding), cut without a mask."""
    if single:
        return picked[:, 0], one_each(picked)
    present = picked >= 0
    return picked[present], present.sum(dim=1)


def offsets_of(lengths: torch.Tensor) -> torch.Tensor:
    """Where each sample's values start (``nn.EmbeddingBag``'s offsets), from the lengths (a KJT's)."""
    return torch.cumsum(lengths, dim=0) - lengths
