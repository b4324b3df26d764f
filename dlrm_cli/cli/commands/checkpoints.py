"""``dlrm checkpoints``: the store as a table; ``rm``, ``prune`` and ``show`` manage it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dlrm_cli.cli import ui
from dlrm_cli.cli.options import JsonOption, StoreOption
from dlrm_cli.config import DEFAULT_STORE
from dlrm_cli.store import manage as core
from dlrm_cli.store.checkpoints import CheckpointStore
from dlrm_cli.store.record import selection_of

app = typer.Typer(
    help="List the checkpoint store; rm, prune and show manage it.",
    epilog="Example: dlrm checkpoints --json",
    invoke_without_command=True,
)
ForceOption = Annotated[bool, typer.Option("--force", help="Also remove what 'latest' or 'best' points at.")]


@app.callback()
def list_command(ctx: typer.Context, json_output: JsonOption = False, store: StoreOption = DEFAULT_STORE) -> None:
    """List checkpoints: name, created, data, epochs, the validation metric that chose the epoch."""
    if ctx.invoked_subcommand is not None:
        return
    from dlrm_cli.cli.tables import show_checkpoints

    listing = core.list_checkpoints(CheckpointStore(Path(store)))
    if json_output:
        ui.print_json(listing.to_dict())
    elif not listing.checkpoints:
        ui.err().print(f"No checkpoints in {listing.store}. Train one with `dlrm train`.")
    else:
        show_checkpoints(listing)


@app.command("rm", epilog="Example: dlrm checkpoints rm old-run other-run")
def remove_command(
    names: Annotated[list[str], typer.Argument(help="Checkpoints to remove.")],
    force: ForceOption = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Remove checkpoints (each is renamed away first, so a crash never leaves half of one)."""
    for name in core.remove_checkpoints(CheckpointStore(Path(store)), names, force):
        ui.out().print(f"Removed {name}")


@app.command("prune", epilog="Example: dlrm checkpoints prune --keep 3")
def prune_command(
    keep: Annotated[int, typer.Option(min=0, help="How many of the newest checkpoints to keep.")],
    force: ForceOption = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Remove all but the newest KEEP checkpoints; 'latest' and 'best' stay unless --force."""
    result = core.prune_checkpoints(CheckpointStore(Path(store)), keep, force, dry_run)
    for name in result.removed:
        ui.out().print(f"{'Would remove' if dry_run else 'Removed'} {name}")
    if result.kept:
        kept = ", ".join(f"{name} ({result.aliases[name]})" for name in result.kept)
        aliased = any(reason != "training" for reason in result.aliases.values())
        ui.err().print(f"Kept {kept}" + ("; pass --force to remove them too" if aliased else ": a run is training it"))
    for name, problem in result.damaged.items():
        ui.err().print(
            f"Left {name} alone: it cannot be read ({problem}); `dlrm checkpoints rm {name}` removes it", soft_wrap=True
        )


@app.command("show", epilog="Example: dlrm checkpoints show latest --json")
def show_command(
    name: Annotated[str, typer.Argument(help="Checkpoint name, latest or best.")] = "latest",
    json_output: JsonOption = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Print a checkpoint's settings, metrics and training history."""
    from rich.table import Table

    from dlrm_cli.cli.options import settings_rows

    details = core.show_checkpoint(CheckpointStore(Path(store)), name)
    if json_output:
        ui.print_json(details.to_dict())
        return
    meta, out = details.meta, ui.out()
    status = "complete" if meta.get("complete") else "incomplete (resume with dlrm train --resume)"
    out.print(f"[bold]{details.name}[/bold] — {status}, created {meta['created'][:19].replace('T', ' ')} UTC")
    out.print(f"data: {json.dumps(details.run.data.to_dict())}")
    settings = Table(title="Settings", show_header=False)
    for key, value in settings_rows(details.run):
        settings.add_row(key, value)
    out.print(settings)
    out.print(ui.history_table(meta.get("history", []), "History"))
    metrics = meta["metrics"]
    line = f"best epoch {meta['best_epoch']}, chosen by {selection_of(meta).label}"
    if "rmse" in metrics["validation"]:
        baseline = (metrics.get("validation_baseline") or {}).get("rmse")
        line += f" (val MAE {ui.fmt(metrics['validation'].get('mae'))}, global-mean baseline RMSE {ui.fmt(baseline)})"
    out.print(line)
