"""``dlrm checkpoints``: the store as a table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dlrm_cli.options import DEFAULT_STORE, JsonOption, StoreOption
from dlrm_cli.store import CheckpointStore

app = typer.Typer(
    help="List the checkpoint store; rm, prune and show manage it.",
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

    checkpoints = CheckpointStore(Path(store))
    infos = checkpoints.infos()
    aliases = checkpoints.aliases(infos)
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
                "complete": bool(meta.get("complete")),
                "latest": info.name == aliases.get("latest"),
                "best": info.name == aliases.get("best"),
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
        table.add_column(
            column, justify="right" if column in ("epochs", "val RMSE") else "left", no_wrap=column == "name"
        )
    for row in rows:
        created = (row["created"] or "")[:19].replace("T", " ")
        labels = [alias for alias in ("latest", "best") if row[alias]]
        if row["problem"]:
            labels = [f"[red]unusable: {row['problem']}"]
        elif not row["complete"]:
            labels.append("[yellow]incomplete")
        note = ", ".join(labels)
        table.add_row(row["name"], created, row["data"] or "?", str(row["epochs"]), ui.fmt(row["val_rmse"]), note)
    ui.out().print(table)


def _protected(store: CheckpointStore) -> dict[str, str]:
    """Checkpoint name -> the alias that points at it."""
    return {name: alias for alias, name in store.aliases().items()}


@app.command("rm", epilog="Example: dlrm checkpoints rm old-run other-run")
def remove_command(
    names: Annotated[list[str], typer.Argument(help="Checkpoints to remove.")],
    force: Annotated[bool, typer.Option("--force", help="Also remove what 'latest' or 'best' points at.")] = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Remove checkpoints (each is renamed away first, so a crash never leaves half of one)."""
    from dlrm_cli import ui
    from dlrm_cli.errors import DlrmUsageError

    checkpoints = CheckpointStore(Path(store))
    if any(name in ("latest", "best") for name in names):
        raise DlrmUsageError("name checkpoints to remove; the aliases latest and best are not accepted here")
    for name in names:
        checkpoints.resolve(name)  # every name must exist before anything is removed
    protected = _protected(checkpoints)
    for name in names:
        if name in protected and not force:
            raise DlrmUsageError(f"checkpoint {name} is '{protected[name]}'; pass --force to remove it")
    for name in dict.fromkeys(names):
        checkpoints.remove(name)
        ui.out().print(f"Removed {name}")


@app.command("prune", epilog="Example: dlrm checkpoints prune --keep 3")
def prune_command(
    keep: Annotated[int, typer.Option(min=0, help="How many of the newest checkpoints to keep.")],
    force: Annotated[bool, typer.Option("--force", help="Also remove what 'latest' or 'best' points at.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Remove all but the newest KEEP checkpoints; 'latest' and 'best' stay unless --force."""
    from dlrm_cli import ui

    checkpoints = CheckpointStore(Path(store))
    infos = checkpoints.infos()
    protected = _protected(checkpoints)
    older = infos[: max(len(infos) - keep, 0)]
    doomed = [info.name for info in older if force or info.name not in protected]
    for name in doomed:
        if not dry_run:
            checkpoints.remove(name)
        ui.out().print(f"{'Would remove' if dry_run else 'Removed'} {name}")
    kept = [f"{name} ({protected[name]})" for name in (info.name for info in older) if name not in doomed]
    if kept:
        ui.err().print(f"Kept {', '.join(kept)}; pass --force to remove them too")


@app.command("show", epilog="Example: dlrm checkpoints show latest --json")
def show_command(
    name: Annotated[str, typer.Argument(help="Checkpoint name, latest or best.")] = "latest",
    json_output: JsonOption = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Print a checkpoint's settings, metrics and training history."""
    from rich.table import Table

    from dlrm_cli import ui

    checkpoint = CheckpointStore(Path(store)).load(name)
    meta = checkpoint.meta
    if json_output:
        ui.print_json({"name": checkpoint.name, **{k: v for k, v in meta.items() if k != "files"}})
        return
    out = ui.out()
    status = "complete" if meta.get("complete") else "incomplete (resume with dlrm train --resume)"
    out.print(f"[bold]{checkpoint.name}[/bold] — {status}, created {meta['created'][:19].replace('T', ' ')} UTC")
    out.print(f"data: {json.dumps(meta['data'])}")
    settings = Table(title="Settings", show_header=False)
    for key, value in (meta.get("options") or meta.get("train") or {}).items():
        if value is not None:
            settings.add_row(key, str(value))
    out.print(settings)
    out.print(ui.history_table(meta.get("history", []), "History"))
    metrics = meta.get("metrics", {})
    validation = metrics.get("validation") or {}
    out.print(
        f"best epoch {meta.get('best_epoch')}: validation RMSE {ui.fmt(validation.get('rmse'))}, "
        f"MAE {ui.fmt(validation.get('mae'))} (global-mean baseline "
        f"{ui.fmt((metrics.get('validation_baseline') or {}).get('rmse'))})"
    )
