"""``dlrm evaluate``: error metrics of a checkpoint on a split of its data."""

from __future__ import annotations

from typing import Annotated

import typer

from dlrm_cli.cli.options import CheckpointOption, Device, DeviceOption, JsonOption, RetrieveQueryOption, StoreOption
from dlrm_cli.config import DEFAULT_STORE

EXAMPLE = "Example: dlrm evaluate --checkpoint latest --split test --json"


def evaluate_command(
    checkpoint: CheckpointOption = "latest",
    split: Annotated[str, typer.Option(help="Which held-out ratings: test or validation.")] = "test",
    data: Annotated[
        str | None,
        typer.Option(help="Score every rating of other data instead (movielens:DIR or csv:FILE)."),
    ] = None,
    k: Annotated[
        str | None,
        typer.Option(
            "--k",
            help="Also rank every candidate item for each held-out user and report top-K metrics at these "
            "cut-offs (e.g. 10 or 5,10,20), beside most-popular, PureSVD and EASE.",
        ),
    ] = None,
    relevant: Annotated[
        float | None,
        typer.Option(
            help="With --k: a held-out rating at or above this makes its item relevant.",
            show_default="4, or the scale's top if lower: for data without ratings, every held-out interaction",
        ),
    ] = None,
    candidates: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --k: rank among this many sampled items per user instead of all (labelled sampled).",
        ),
    ] = None,
    sample_users: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --k: rank this many held-out users, drawn uniformly with a fixed seed, instead of all "
            "(labelled sampled; for large data, where ranking the whole catalogue for every user takes hours).",
        ),
    ] = None,
    baselines: Annotated[bool, typer.Option(help="With --k: also rank with the baselines.")] = True,
    retrieve: RetrieveQueryOption = None,
    json_output: JsonOption = False,
    device: DeviceOption = Device.auto,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Report MSE, RMSE and MAE beside the global-mean baseline and the noise floor; with --k, top-K
    ranking metrics beside ranking baselines."""
    from dlrm_cli.cli import tables, ui
    from dlrm_cli.errors import DlrmUsageError
    from dlrm_cli.scoring.evaluation import SPLITS, evaluate_checkpoint
    from dlrm_cli.store.loading import open_model

    if split not in SPLITS:
        raise DlrmUsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    cutoffs = None
    if k is not None:
        from dlrm_cli.cli.parsing import parse_cutoffs

        cutoffs = parse_cutoffs(k)
        if data is not None:
            raise DlrmUsageError("--k ranks a split of the checkpoint's own data; leave out --data")
    with tables.progress(json_output) as progress:
        progress(f"Loading checkpoint {checkpoint}")
        loaded = open_model(store, checkpoint, device)
        items = len(loaded.catalog.items)
        if cutoffs is not None and max(cutoffs) > items:
            raise DlrmUsageError(
                f"--k {max(cutoffs)} is more than the {items:,} items checkpoint {loaded.checkpoint.name} "
                f"can rank; give at most {items}"
            )
        report = evaluate_checkpoint(
            loaded, split, data, cutoffs, relevant, candidates, baselines, progress, retrieve, sample_users
        )
    if json_output:
        ui.print_json(report.to_dict())
        return
    tables.show_evaluation(report, where=f"the {split} split" if data is None else data)
