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
    json_output: JsonOption = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Export a checkpoint for serving; the artifact needs only PyTorch to run."""
    import os

    from dlrm_cli.errors import DlrmUsageError

    formats = ("torchscript", "pt2")
    if format not in formats:
        raise DlrmUsageError(f"--format must be one of {', '.join(formats)}, got {format!r}")
    output = Path(output)
    folder = output.parent
    if output.is_dir():
        raise DlrmUsageError(f"--output {output} is a folder; give a file path")
    if not folder.is_dir():
        raise DlrmUsageError(f"--output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise DlrmUsageError(f"--output folder {folder} is not writable")

    import json

    import torch

    from dlrm_cli import ui
    from dlrm_cli.data import load_dataset
    from dlrm_cli.errors import DlrmError
    from dlrm_cli.loading import load_model
    from dlrm_cli.metrics import score
    from dlrm_cli.serving import PARITY_TOLERANCE, describe, export_model, plain_inputs
    from dlrm_cli.store import CheckpointStore

    loaded = load_model(CheckpointStore(Path(store)).load(checkpoint), torch.device("cpu"))
    held_out = load_dataset(loaded.meta["data"]).test
    rows = torch.arange(min(len(held_out), 1024))
    users, items = held_out.user[rows], held_out.item[rows]
    inputs = plain_inputs(loaded.catalog, users, items)
    try:
        artifact = export_model(loaded.model, format, output, inputs)
    except OSError as error:
        raise DlrmError(f"cannot write {output}: {error.strerror or error}") from None
    with torch.inference_mode():
        exported = artifact(*inputs)
    eager = score(loaded.model, loaded.catalog, users, items, torch.device("cpu"))
    difference = float((exported - eager).abs().max())
    if not difference <= PARITY_TOLERANCE:
        output.unlink(missing_ok=True)
        raise DlrmError(
            f"the exported model disagrees with the checkpoint by {difference:.3g} (limit {PARITY_TOLERANCE:g}); "
            "nothing was written"
        )
    description = describe(loaded.model, loaded.catalog, format, loaded.checkpoint.name)
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
    if json_output:
        ui.print_json(report)
        return
    console = ui.out()
    console.print(f"Exported {loaded.checkpoint.name} as {format} to {output} ({size / 1e6:.1f} MB)")
    console.print(
        f"Parity on {len(rows):,} held-out ratings: max |exported - eager| = {difference:.2e} "
        f"(limit {PARITY_TOLERANCE:g})"
    )
    console.print(f"Inputs described in {sidecar}")
