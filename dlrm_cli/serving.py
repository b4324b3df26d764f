"""Artifacts for serving: the trained model as plain PyTorch, taking plain tensors.

The exported module needs neither dlrm_cli nor TorchRec to load: its embedding tables are
``nn.EmbeddingBag`` copies of the trained ones and its MLPs and interaction are traced into the artifact.

Inputs (B batch, Dn dense features, F sparse features):
    dense:   float32, B x Dn, standardised as described in the side file
    ids:     F int64 tensors; ids[f] holds the embedding rows of feature f for the whole batch, concatenated
    offsets: F int64 tensors of size B; offsets[f][b] is where sample b's rows start in ids[f]
Output: float32 tensor of size B, the predicted ratings.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrm_cli.data import load_dataset
from dlrm_cli.data.catalog import Catalog, Ratings
from dlrm_cli.errors import DlrmError
from dlrm_cli.loading import LoadedModel
from dlrm_cli.metrics import EVAL_BATCH, error_metrics, score
from dlrm_cli.model import RatingDLRM, table_name, to_rating
from dlrm_cli.parsing import sidecar_path, temporary_beside
from dlrm_cli.quiet import quiet_library_logs

PARITY_TOLERANCE = 1e-5


class ServingDLRM(nn.Module):
    """The same computation as ``RatingDLRM`` over plain tensors instead of a KeyedJaggedTensor."""

    def __init__(self, model: RatingDLRM) -> None:
        super().__init__()
        ebc = model.dlrm.sparse_arch.embedding_bag_collection
        self.bags = nn.ModuleList(
            nn.EmbeddingBag.from_pretrained(ebc.embedding_bags[table_name(feature)].weight.detach().clone(), mode="sum")
            for feature in model.config.feature_names
        )
        self.dense_arch = copy.deepcopy(model.dlrm.dense_arch)
        self.inter_arch = copy.deepcopy(model.dlrm.inter_arch)
        self.over_arch = copy.deepcopy(model.dlrm.over_arch)
        self.rating_min = float(model.rating_min)
        self.rating_span = float(model.rating_span)
        self.requires_grad_(False)

    def forward(self, dense: torch.Tensor, ids: list[torch.Tensor], offsets: list[torch.Tensor]) -> torch.Tensor:
        pooled = []
        for index, bag in enumerate(self.bags):
            pooled.append(bag(ids[index], offsets[index]))
        sparse = torch.stack(pooled, dim=1)
        logits = self.over_arch(self.inter_arch(self.dense_arch(dense), sparse)).squeeze(1)
        return to_rating(logits, self.rating_min, self.rating_span)


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


def export_model(model: RatingDLRM, fmt: str, path: Path, example: tuple[Any, ...], quantize: str | None = None) -> Any:
    """Write the artifact at ``path`` (the caller's temporary file) and return it loaded back."""
    serving = ServingDLRM(model.cpu()).eval()
    if quantize == "int8":
        import torchrec

        from dlrm_cli.quantized import QuantizedServingDLRM

        quantized = QuantizedServingDLRM(model).eval()
        with quiet_library_logs():
            scripted = torch.jit.script(torchrec.fx.symbolic_trace(quantized))
        torch.jit.save(scripted, str(path))
    elif fmt == "torchscript":
        torch.jit.save(torch.jit.script(serving), str(path))
    elif fmt == "pt2":
        batch = torch.export.Dim("batch", min=1)
        features = len(example[1])
        dynamic = (
            {0: batch},
            [{0: torch.export.Dim(f"ids_{f}", min=1)} for f in range(features)],
            [{0: batch} for _ in range(features)],
        )
        program = torch.export.export(serving, example, dynamic_shapes=dynamic)
        torch.export.save(program, str(path))
    else:
        raise DlrmError(f"unknown export format {fmt!r}")
    return load_artifact(path, fmt)


def _replace_both(first: tuple[Path, Path], second: tuple[Path, Path]) -> None:
    """Rename two finished files into place, so that a failure leaves both old files (or none) there: the
    first target's old version is kept as a hard link until the second rename has succeeded."""
    (new, target), (new_second, target_second) = first, second
    backup = temporary_beside(target)
    try:
        os.link(target, backup)
    except FileNotFoundError:
        backup = None  # nothing there to keep
    try:
        os.replace(new, target)
        try:
            os.replace(new_second, target_second)
        except OSError:
            if backup is not None:
                os.replace(backup, target)
            else:
                target.unlink(missing_ok=True)
            raise
    finally:
        if backup is not None:
            backup.unlink(missing_ok=True)


def load_artifact(path: Path, fmt: str) -> Any:
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    return torch.export.load(str(path)).module()


def float_size(model: RatingDLRM) -> int:
    """Bytes of the float TorchScript artifact, to compare a quantized one with."""
    import io

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(ServingDLRM(model.cpu()).eval()), buffer)
    return len(buffer.getvalue())


def describe(
    model: RatingDLRM, catalog: Catalog, fmt: str, checkpoint: str, quantize: str | None = None
) -> dict[str, Any]:
    """The side file that tells serving code what to feed the artifact."""
    load = "torch.jit.load(path)" if fmt == "torchscript" else "torch.export.load(path).module()"
    if quantize:
        load = "import torchrec; torch.jit.load(path)  # torchrec registers FBGEMM's int8 operators"
    return {
        "checkpoint": checkpoint,
        "format": fmt,
        "quantize": quantize,
        "load": load,
        "call": "model(dense, ids, offsets) -> ratings (float32, size B)",
        "rating_range": [model.config.rating_min, model.config.rating_max],
        "dense": {
            "shape": ["B", len(catalog.dense_names)],
            "dtype": "float32",
            "features": catalog.dense_names,
            "note": "standardised with the training data's statistics; each user's and item's row is in the checkpoint",
        },
        "sparse": [
            {"feature": name, "rows": rows, "ids": "int64 embedding rows", "offsets": "int64, size B"}
            for name, rows in catalog.sparse_features
        ],
    }


@dataclass(frozen=True)
class Quantization:
    """What int8 tables save and cost: artifact size, and test RMSE against the float model."""

    bytes: int
    float_bytes: int
    float_rmse: float
    int8_rmse: float
    rmse_change: float
    ratings: int


@dataclass(frozen=True)
class ExportResult:
    """A written artifact, its side file, and how closely it agrees with the checkpoint."""

    checkpoint: str
    format: str
    output: str
    description: str
    bytes: int
    parity_samples: int
    max_abs_difference: float
    quantization: Quantization | None = None

    def to_dict(self) -> dict[str, Any]:
        report = asdict(self)
        if self.quantization is None:
            del report["quantization"]
        return report


def export_checkpoint(loaded: LoadedModel, output: Path, fmt: str, quantize: str | None = None) -> ExportResult:
    """Write ``loaded`` as a serving artifact at ``output`` and its input description at ``output``.json,
    after checking the artifact against the eager model on up to 1,024 held-out ratings (nothing is left
    at ``output`` when the check fails)."""
    from dlrm_cli.quantized import QuantizedServingDLRM

    held_out = load_dataset(loaded.checkpoint.run.data).test
    rows = torch.arange(min(len(held_out), 1024))
    users, items = held_out.user[rows], held_out.item[rows]
    inputs = plain_inputs(loaded.catalog, users, items)
    sidecar = sidecar_path(output)
    tmp, sidecar_tmp = temporary_beside(output), temporary_beside(sidecar)
    try:
        tmp.write_bytes(b"")  # an unwritable place fails here with a plain OSError, not inside torch's C++
        artifact = export_model(loaded.model, fmt, tmp, inputs, quantize)
        with torch.inference_mode():
            exported = artifact(*inputs)
            if quantize:  # an int8 artifact must match the eager int8 model, not the float one
                eager = QuantizedServingDLRM(loaded.model).eval()(*inputs)
            else:
                eager = score(loaded.model, loaded.catalog, users, items, torch.device("cpu"))
        difference = float((exported - eager).abs().max())
        if not difference <= PARITY_TOLERANCE:
            raise DlrmError(
                f"the exported model disagrees with the checkpoint by {difference:.3g} "
                f"(limit {PARITY_TOLERANCE:g}); nothing was written"
            )
        description = describe(loaded.model, loaded.catalog, fmt, loaded.checkpoint.name, quantize)
        sidecar_tmp.write_text(json.dumps(description, indent=2) + "\n")
        _replace_both((tmp, output), (sidecar_tmp, sidecar))
    except OSError as error:
        raise DlrmError(f"cannot write {output}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)
        sidecar_tmp.unlink(missing_ok=True)
    size = output.stat().st_size
    return ExportResult(
        checkpoint=loaded.checkpoint.name,
        format=fmt,
        output=str(output),
        description=str(sidecar),
        bytes=size,
        parity_samples=len(rows),
        max_abs_difference=difference,
        quantization=_quantization(loaded, held_out, artifact, size) if quantize else None,
    )


def _quantization(loaded: LoadedModel, held_out: Ratings, artifact: Any, size: int) -> Quantization:
    predicted = []
    with torch.inference_mode():
        for start in range(0, len(held_out), EVAL_BATCH):
            chunk = slice(start, start + EVAL_BATCH)
            predicted.append(artifact(*plain_inputs(loaded.catalog, held_out.user[chunk], held_out.item[chunk])))
    int8 = error_metrics(torch.cat(predicted), held_out.rating)["rmse"]
    float_predicted = score(loaded.model, loaded.catalog, held_out.user, held_out.item, torch.device("cpu"))
    float_rmse = error_metrics(float_predicted, held_out.rating)["rmse"]
    return Quantization(size, float_size(loaded.model), float_rmse, int8, int8 - float_rmse, len(held_out))
