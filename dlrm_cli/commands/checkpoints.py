"""``dlrm checkpoints``: the store as a table."""

from __future__ import annotations

from pathlib import Path

import typer

from dlrm_cli.options import DEFAULT_STORE, JsonOption, StoreOption

app = typer.Typer(
    help="List the checkpoint store.",
    epilog="Example: dlrm checkpoints --json",
    invoke_without_command=True,
)


@app.callback()
def list_command(ctx: typer.Context, json_output: JsonOption = False, store: StoreOption = DEFAULT_STORE) -> None:
    """List checkpoints: name, created, data, epochs, validation RMSE."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from dlrm_cli import ui
    from dlrm_cli.store import CheckpointStore

    checkpoints = CheckpointStore(Path(store))
    infos = checkpoints.infos()
    latest = next((info.name for info in reversed(infos) if info.problem is None), None)
    rows = []
    for info in infos:
        meta = info.meta or {}
        history = meta.get("history") or []
        validation = (meta.get("metrics") or {}).get("validation") or {}
        rows.append(
            {
                "name": info.name,
                "created": meta.get("created"),
                "data": (meta.get("data") or {}).get("kind"),
                "epochs": len(history),
                "val_rmse": validation.get("rmse"),
                "latest": info.name == latest,
                "problem": info.problem,
            }
        )
    if json_output:
        ui.print_json({"store": str(checkpoints.root), "checkpoints": rows})
        return
    if not rows:
        ui.err().print(f"No checkpoints in {checkpoints.root}. Train one with `dlrm train`.")
        return
    table = Table(title=f"Checkpoints in {checkpoints.root}")
    for column in ("name", "created", "data", "epochs", "val RMSE", ""):
        table.add_column(column, justify="right" if column in ("epochs", "val RMSE") else "left")
    for row in rows:
        created = (row["created"] or "")[:19].replace("T", " ")
        note = "latest" if row["latest"] else (f"[red]unusable: {row['problem']}" if row["problem"] else "")
        table.add_row(row["name"], created, row["data"] or "?", str(row["epochs"]), ui.fmt(row["val_rmse"]), note)
    ui.out().print(table)
