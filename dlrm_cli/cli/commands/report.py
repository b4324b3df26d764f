"""``dlrm report``: curves, metrics and the prediction histogram of one or more runs, as HTML or PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlrm_cli.cli.options import ForceOutputOption, StoreOption
from dlrm_cli.config import DEFAULT_STORE

EXAMPLE = "Example: dlrm report run-a run-b --output report.html"


def report_command(
    names: Annotated[list[str] | None, typer.Argument(help="Checkpoints to compare (default: latest).")] = None,
    output: Annotated[Path, typer.Option(help="report.html or report.png; its folder must exist.")] = Path(
        "report.html"
    ),
    k: Annotated[int, typer.Option("--k", min=0, help="Top-K ranking metrics in the table (0: none).")] = 10,
    force: ForceOutputOption = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Loss and validation-RMSE curves of several runs on one chart, the final metrics, and a histogram
    of predicted against actual ratings on the test split."""
    from dlrm_cli.errors import DlrmError, DlrmUsageError
    from dlrm_cli.runtime.files import output_path

    if Path(output).suffix.lower() not in (".html", ".png"):
        raise DlrmUsageError(f"--output must end in .html or .png, got {Path(output).name!r}")
    output = output_path(output, force)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DlrmError("dlrm report needs matplotlib: pip install 'dlrm-cli[report]'") from None

    from dlrm_cli.cli import tables, ui
    from dlrm_cli.tools.report import build_report

    refs = list(dict.fromkeys(names or ["latest"]))
    with tables.progress() as progress:
        written = build_report(Path(store), refs, output, k, progress)
    ui.out().print(f"Wrote {output} ({output.stat().st_size / 1e3:.0f} kB) comparing {', '.join(written)}")
