"""``dlrm doctor``: is this installation able to run dlrm, and if not, what to do."""

from __future__ import annotations

from pathlib import Path

from dlrm_cli.cli.options import JsonOption, StoreOption
from dlrm_cli.config import DEFAULT_STORE

EXAMPLE = "Example: dlrm doctor --json"


def doctor_command(json_output: JsonOption = False, store: StoreOption = DEFAULT_STORE) -> None:
    """Check Python, torch, FBGEMM and TorchRec (versions, whether they fit and load), CUDA, threads
    and the checkpoint store; each line green or red, with the fix for red."""
    import typer

    from dlrm_cli.cli import ui
    from dlrm_cli.tools.doctor import run_checks

    checks = run_checks(Path(store))
    failed = [check for check in checks if check.status == "fail"]
    if json_output:
        ui.print_json({"ok": not failed, "checks": [check.__dict__ for check in checks]})
    else:
        console = ui.out()
        marks = {
            "ok": "[green]✔[/green]",
            "warn": "[yellow]![/yellow]",
            "fail": "[red]✘[/red]",
            "info": "[blue]·[/blue]",
        }
        for check in checks:
            console.print(f"{marks[check.status]} {check.name}: {check.detail}")
            if check.fix and check.status in ("fail", "warn"):
                console.print(f"    fix: {check.fix}")
    if failed:
        raise typer.Exit(1)
