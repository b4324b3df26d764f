"""Options shared by several commands, declared once."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class Embeddings(StrEnum):
    fused = "fused"
    plain = "plain"


class SparseOptimizer(StrEnum):
    rowwise_adagrad = "rowwise_adagrad"
    adagrad = "adagrad"
    sgd = "sgd"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


StoreOption = Annotated[
    Path,
    typer.Option(
        "--store",
        envvar="DLRM_CHECKPOINT_DIR",
        help="Checkpoint store folder.",
        show_envvar=True,
    ),
]
CheckpointOption = Annotated[
    str,
    typer.Option("--checkpoint", "-c", help="Checkpoint name, or 'latest' for the newest."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")]
DeviceOption = Annotated[Device, typer.Option("--device", help="Where to run: CUDA when available, or as chosen.")]
DEFAULT_STORE = Path("checkpoints")


def positive(value: float | None) -> float | None:
    """Typer callback: the value must be a finite number above zero."""
    if value is not None and not (0 < value < float("inf")):
        raise typer.BadParameter(f"{value} is not a positive number")
    return value
