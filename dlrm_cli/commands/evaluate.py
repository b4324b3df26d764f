"""``dlrm evaluate``: error metrics of a checkpoint on a split of its data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlrm_cli.options import DEFAULT_STORE, CheckpointOption, DeviceOption, JsonOption, StoreOption

EXAMPLE = "Example: dlrm evaluate --checkpoint latest --split test --json"


def evaluate_command(
    checkpoint: CheckpointOption = "latest",
    split: Annotated[str, typer.Option(help="Which held-out ratings: test or validation.")] = "test",
    data: Annotated[
        str | None,
        typer.Option(help="Score every rating of other data instead (movielens:DIR or csv:FILE)."),
    ] = None,
    json_output: JsonOption = False,
    device: DeviceOption = "auto",  # type: ignore[assignment]
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Report MSE, RMSE and MAE beside the global-mean baseline and the noise floor."""
    from rich.table import Table

    from dlrm_cli import ui
    from dlrm_cli.errors import DlrmUsageError
    from dlrm_cli.inference import SPLITS, evaluate
    from dlrm_cli.loading import load_model
    from dlrm_cli.model import resolve_device
    from dlrm_cli.store import CheckpointStore

    if split not in SPLITS:
        raise DlrmUsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    loaded = load_model(CheckpointStore(Path(store)).load(checkpoint), resolve_device(getattr(device, "value", device)))
    source = None
    if data is not None:
        from dlrm_cli.data import parse_data_option

        trained_on = loaded.meta["data"]
        columns = trained_on.get("columns") if data.startswith("csv:") and trained_on["kind"] == "csv" else None
        if data.startswith("csv:") and columns is None:
            columns = {}
        source = parse_data_option(data, columns=columns)
    report = evaluate(loaded, split, source)
    if json_output:
        ui.print_json(report)
        return
    where = f"the {split} split" if data is None else data
    table = Table(title=f"{report['checkpoint']} on {where} ({report['count']:,} ratings)")
    for column in ("", "MSE", "RMSE", "MAE"):
        table.add_column(column, justify="left" if not column else "right")
    rows = [("DLRM", report["model"]), ("global-mean baseline", report["global_mean_baseline"])]
    if report["noise_floor"] is not None:
        rows.append(("noise floor (perfect model)", report["noise_floor"]))
    for label, metrics in rows:
        table.add_row(label, ui.fmt(metrics["mse"]), ui.fmt(metrics["rmse"]), ui.fmt(metrics["mae"]))
    ui.out().print(table)
