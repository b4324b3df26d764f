"""``dlrm evaluate``: error metrics of a checkpoint on a split of its data."""

from __future__ import annotations

from typing import Annotated

import typer

from dlrm_cli.options import DEFAULT_STORE, CheckpointOption, Device, DeviceOption, JsonOption, StoreOption

EXAMPLE = "Example: dlrm evaluate --checkpoint latest --split test --json"


def evaluate_command(
    checkpoint: CheckpointOption = "latest",
    split: Annotated[str, typer.Option(help="Which held-out ratings: test or validation.")] = "test",
    data: Annotated[
        str | None,
        typer.Option(help="Score every rating of other data instead (movielens:DIR or csv:FILE)."),
    ] = None,
    json_output: JsonOption = False,
    device: DeviceOption = Device.auto,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Report MSE, RMSE and MAE beside the global-mean baseline and the noise floor."""
    from dlrm_cli import ui
    from dlrm_cli.errors import DlrmUsageError
    from dlrm_cli.inference import SPLITS, evaluate, source_to_score
    from dlrm_cli.loading import open_model

    if split not in SPLITS:
        raise DlrmUsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    loaded = open_model(store, checkpoint, device)
    result = evaluate(loaded, split, source_to_score(loaded, data) if data is not None else None)
    if json_output:
        ui.print_json(result.to_dict())
        return
    from rich.table import Table

    where = f"the {split} split" if data is None else data
    table = Table(title=f"{result.checkpoint} on {where} ({result.count:,} ratings)")
    for column in ("", "MSE", "RMSE", "MAE"):
        table.add_column(column, justify="left" if not column else "right")
    rows = [("DLRM", result.model), ("global-mean baseline", result.global_mean_baseline)]
    if result.noise_floor is not None:
        rows.append(("noise floor (perfect model)", result.noise_floor))
    for label, metrics in rows:
        table.add_row(label, ui.fmt(metrics["mse"]), ui.fmt(metrics["rmse"]), ui.fmt(metrics["mae"]))
    ui.out().print(table)
