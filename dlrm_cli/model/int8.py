"""The int8 serving model: TorchRec's quantized embedding tables over dlrm's plain serving inputs.

No ``from __future__ import annotations`` here, and ``typing.List`` in signatures: torch.fx copies these
annotations into the code it generates, which TorchScript must then resolve.
"""

import copy
from typing import List, Tuple  # noqa: UP035

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_cli.model.dlrm import RatingDLRM, to_rating


@torch.fx.wrap
def kjt_from_lists(keys: List[str], ids: List[torch.Tensor], offsets: List[torch.Tensor]) -> KeyedJaggedTensor:  # noqa: UP006
    """The KJT for per-feature ids and EmbeddingBag-style offsets (a leaf for torch.fx, scripted as is)."""
    lengths: List[torch.Tensor] = []  # noqa: UP006
    for i in range(len(ids)):
        end = torch.full((1,), ids[i].numel(), dtype=offsets[i].dtype)
        lengths.append(torch.cat([offsets[i][1:], end]) - offsets[i])
    return KeyedJaggedTensor.from_lengths_sync(keys, torch.cat(ids), torch.cat(lengths))


@torch.fx.wrap
def at_least_one(
    dense: torch.Tensor,
    ids: List[torch.Tensor],  # noqa: UP006
    offsets: List[torch.Tensor],  # noqa: UP006
) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:  # noqa: UP006
    """The batch itself; for an empty batch, one placeholder sample (row 0 of every table), whose output the
    caller drops: TorchRec's int8 tables cannot pool an empty batch, and the other artifacts answer one."""
    if dense.shape[0] > 0:
        return dense, ids, offsets
    one_ids: List[torch.Tensor] = []  # noqa: UP006
    one_offsets: List[torch.Tensor] = []  # noqa: UP006
    for i in range(len(ids)):
        one_ids.append(torch.zeros(1, dtype=ids[i].dtype))
        one_offsets.append(torch.zeros(1, dtype=offsets[i].dtype))
    return torch.zeros(1, dense.shape[1], dtype=dense.dtype), one_ids, one_offsets


class QuantizedServingDLRM(nn.Module):
    """The model with TorchRec's int8 embedding tables (``torchrec.quant``), over the same plain inputs.
    Loading it needs FBGEMM's int8 operators: ``import torchrec`` (or ``fbgemm_gpu``) first."""

    def __init__(self, model: RatingDLRM, head: str = "") -> None:
        super().__init__()
        from torchrec.inference.modules import quantize_embeddings

        self.model = quantize_embeddings(copy.deepcopy(model).cpu().eval(), dtype=torch.qint8, inplace=True)
        self.keys = list(model.config.feature_names)
        head = head or model.config.heads[0]  # the served head (see ``ServingDLRM``), the first by default
        self.head = model.config.heads.index(head)
        self.low, self.span = model.head_scale(head)
        self.requires_grad_(False)

    def forward(self, dense: torch.Tensor, ids: List[torch.Tensor], offsets: List[torch.Tensor]) -> torch.Tensor:  # noqa: UP006
        batch = dense.shape[0]
        dense, ids, offsets = at_least_one(dense, ids, offsets)
        logits = self.model.logits(dense, kjt_from_lists(self.keys, ids, offsets))
        return to_rating(logits[:, self.head], self.low, self.span).narrow(0, 0, batch)
