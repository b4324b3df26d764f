"""``dlrm export``: write a serving artifact, check it against the eager model, describe its inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlrm_cli.cli.options import CheckpointOption, ForceOutputOption, JsonOption, StoreOption
from dlrm_cli.config import DEFAULT_STORE, ExportSpec

EXPORT = ExportSpec()

EXAMPLE = "Example: dlrm export --output model.pt2"


def export_command(
    output: Annotated[
        Path, typer.Option(help="Where to write the artifact (and its inputs, at OUTPUT.json); its folder must exist.")
    ],
    checkpoint: CheckpointOption = "latest",
    format: Annotated[
        str | None,
        typer.Option(
            "--format", help="pt2 (torch.export) or torchscript.", show_default="pt2; torchscript with --quantize"
        ),
    ] = None,
    inputs: Annotated[
        str,
        typer.Option(help="ids: raw user and item ids in; features: embedding rows and standardised features in."),
    ] = EXPORT.inputs,
    quantize: Annotated[
        str | None, typer.Option(help="int8: quantize the embedding tables with torchrec.quant (TorchScript).")
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(
            help="rating or ranking: which of the model's outputs the artifact serves (ranking: the probability "
            "of an interaction, which ranks a user's items).",
            show_default="the model's first: rating, or ranking for a ranking-only model",
        ),
    ] = None,
    force: ForceOutputOption = False,
    json_output: JsonOption = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Export a checkpoint for serving; the artifact needs only PyTorch to run."""
    from dlrm_cli.errors import DlrmUsageError
    from dlrm_cli.runtime.files import interrupted_writes, output_path, sidecar_path

    try:
        spec = ExportSpec(format, inputs, quantize, head)
    except ValueError as error:
        raise DlrmUsageError(str(error)) from None
    output = output_path(output, force)
    output_path(sidecar_path(output), force)  # the file describing its inputs follows the same rule

    from dlrm_cli.cli import tables, ui
    from dlrm_cli.serving.export import PARITY_TOLERANCE, export_checkpoint
    from dlrm_cli.store.loading import open_model

    with interrupted_writes(output, sidecar_path(output)), tables.progress(json_output) as progress:
        progress(f"Loading checkpoint {checkpoint}")
        result = export_checkpoint(open_model(store, checkpoint), output, spec, progress)
    if json_output:
        ui.print_json(result.to_dict())
        return
    console = ui.out()
    served = result.checkpoint if result.head == "rating" else f"the ranking head of {result.checkpoint}"
    console.print(f"Exported {served} as {spec.format} taking {spec.inputs} to {output} ({result.bytes / 1e6:.1f} MB)")
    console.print(
        f"Parity on {result.parity_samples:,} held-out pairs: max |exported - eager| = "
        f"{result.max_abs_difference:.2e} (limit {PARITY_TOLERANCE:g})"
    )
    q = result.quantization
    if q is not None:
        if q.float_auc is not None:
            change = (
                f"test AUC {q.float_auc:.4f} -> {q.int8_auc:.4f} ({q.auc_change:+.4f}) on {q.ratings:,} held-out pairs"
            )
        else:
            change = (
                f"test RMSE {q.float_rmse:.4f} -> {q.int8_rmse:.4f} ({q.rmse_change:+.4f}) on {q.ratings:,} ratings"
            )
        console.print(
            f"int8 tables: {q.bytes:,} bytes against {q.float_bytes:,} for float "
            f"({_size_change(q.bytes, q.float_bytes)}); {change}"
        )
    console.print(f"Inputs described in {result.description}")
    if result.two_stages:
        console.print("Not in the artifact: the retrieval stage and the ranker (see two_stages in the description)")


def _size_change(size: int, reference: int) -> str:
    """``59% smaller`` or, for a model whose int8 tables' per-row scales outweigh what they save, ``71% larger``."""
    change = round(100 * (1 - size / reference))
    return f"{change}% smaller" if change >= 0 else f"{-change}% larger"
