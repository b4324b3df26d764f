"""``dlrm export``: write a serving artifact, check it against the eager model, describe its inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlrm_cli.options import DEFAULT_STORE, CheckpointOption, JsonOption, StoreOption

EXAMPLE = "Example: dlrm export --format torchscript --output model.pt"


def export_command(
    output: Annotated[Path, typer.Option(help="Where to write the artifact; its folder must exist.")],
    checkpoint: CheckpointOption = "latest",
    format: Annotated[str, typer.Option("--format", help="torchscript or pt2 (torch.export).")] = "torchscript",
    quantize: Annotated[
        str | None, typer.Option(help="int8: quantize the embedding tables with torchrec.quant (TorchScript).")
    ] = None,
    json_output: JsonOption = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Export a checkpoint for serving; the artifact needs only PyTorch to run."""
    from dlrm_cli.errors import DlrmUsageError
    from dlrm_cli.parsing import output_path

    formats = ("torchscript", "pt2")
    if format not in formats:
        raise DlrmUsageError(f"--format must be one of {', '.join(formats)}, got {format!r}")
    if quantize not in (None, "int8"):
        raise DlrmUsageError(f"--quantize takes int8, got {quantize!r}")
    if quantize and format != "torchscript":
        raise DlrmUsageError("--quantize int8 exports TorchScript; leave out --format pt2")
    output = output_path(output)

    import json

    import torch

    from dlrm_cli import ui
    from dlrm_cli.data import load_dataset
    from dlrm_cli.errors import DlrmError
    from dlrm_cli.loading import load_model
    from dlrm_cli.metrics import score
    from dlrm_cli.quantized import QuantizedServingDLRM
    from dlrm_cli.serving import PARITY_TOLERANCE, describe, export_model, plain_inputs
    from dlrm_cli.store import CheckpointStore

    loaded = load_model(CheckpointStore(Path(store)).load(checkpoint), torch.device("cpu"))
    held_out = load_dataset(loaded.meta["data"]).test
    rows = torch.arange(min(len(held_out), 1024))
    users, items = held_out.user[rows], held_out.item[rows]
    inputs = plain_inputs(loaded.catalog, users, items)
    try:
        artifact = export_model(loaded.model, format, output, inputs, quantize)
    except OSError as error:
        raise DlrmError(f"cannot write {output}: {error.strerror or error}") from None
    with torch.inference_mode():
        exported = artifact(*inputs)
    reference = QuantizedServingDLRM(loaded.model).eval() if quantize else None
    if reference is not None:  # an int8 artifact must match the eager int8 model, not the float one
        with torch.inference_mode():
            eager = reference(*inputs)
    else:
        eager = score(loaded.model, loaded.catalog, users, items, torch.device("cpu"))
    difference = float((exported - eager).abs().max())
    if not difference <= PARITY_TOLERANCE:
        output.unlink(missing_ok=True)
        raise DlrmError(
            f"the exported model disagrees with the checkpoint by {difference:.3g} (limit {PARITY_TOLERANCE:g}); "
            "nothing was written"
        )
    description = describe(loaded.model, loaded.catalog, format, loaded.checkpoint.name, quantize)
    sidecar = output.with_name(output.name + ".json")
    try:
        sidecar.write_text(json.dumps(description, indent=2) + "\n")
    except OSError as error:
        output.unlink(missing_ok=True)
        raise DlrmError(f"cannot write {sidecar}: {error.strerror or error}") from None
    size = output.stat().st_size
    report = {
        "checkpoint": loaded.checkpoint.name,
        "format": format,
        "output": str(output),
        "description": str(sidecar),
        "bytes": size,
        "parity_samples": len(rows),
        "max_abs_difference": difference,
    }
    if quantize:
        report["quantization"] = _quantization_report(loaded, held_out, artifact, size)
    if json_output:
        ui.print_json(report)
        return
    console = ui.out()
    console.print(f"Exported {loaded.checkpoint.name} as {format} to {output} ({size / 1e6:.1f} MB)")
    console.print(
        f"Parity on {len(rows):,} held-out ratings: max |exported - eager| = {difference:.2e} "
        f"(limit {PARITY_TOLERANCE:g})"
    )
    if quantize:
        q = report["quantization"]
        console.print(
            f"int8 tables: {q['bytes']:,} bytes against {q['float_bytes']:,} for float "
            f"({100 * (1 - q['bytes'] / q['float_bytes']):.0f}% smaller); test RMSE {q['float_rmse']:.4f} -> "
            f"{q['int8_rmse']:.4f} ({q['rmse_change']:+.4f}) on {q['ratings']:,} ratings"
        )
    console.print(f"Inputs described in {sidecar}")


def _quantization_report(loaded, held_out, artifact, size: int) -> dict:
    """What int8 tables save and cost: artifact size, and test RMSE against the float model."""
    import torch

    from dlrm_cli.metrics import EVAL_BATCH, error_metrics, score
    from dlrm_cli.serving import float_size, plain_inputs

    predicted = []
    with torch.inference_mode():
        for start in range(0, len(held_out), EVAL_BATCH):
            inputs = plain_inputs(
                loaded.catalog, held_out.user[start : start + EVAL_BATCH], held_out.item[start : start + EVAL_BATCH]
            )
            predicted.append(artifact(*inputs))
    int8 = error_metrics(torch.cat(predicted), held_out.rating)["rmse"]
    float_rmse = error_metrics(
        score(loaded.model, loaded.catalog, held_out.user, held_out.item, torch.device("cpu")), held_out.rating
    )["rmse"]
    return {
        "bytes": size,
        "float_bytes": float_size(loaded.model),
        "float_rmse": float_rmse,
        "int8_rmse": int8,
        "rmse_change": int8 - float_rmse,
        "ratings": len(held_out),
    }
