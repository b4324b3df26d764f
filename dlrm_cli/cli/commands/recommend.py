"""``dlrm recommend``: the best items of the whole catalogue for one user, or for many into a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlrm_cli.cli import options as o
from dlrm_cli.config import DEFAULT_STORE

EXAMPLE = "Example: dlrm recommend --user 42 --top 10   |   dlrm recommend --all-users --output recs.csv"


def recommend_command(
    user: Annotated[str | None, typer.Option(help="The user's id, as in the training data.")] = None,
    top: Annotated[int, typer.Option(min=1, help="How many items to show (per user).")] = 10,
    exclude_seen: Annotated[
        bool,
        typer.Option(
            "--exclude-seen/--include-seen", help="Leave out (or keep) items the user rated in the training data."
        ),
    ] = True,
    all_users: Annotated[
        bool, typer.Option("--all-users", help="Recommend for every user of the training data (needs --output).")
    ] = False,
    users: Annotated[
        Path | None, typer.Option(help="Recommend for the user ids in this file, one per line (needs --output).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="With --all-users or --users: write user, rank, item, score rows to a .csv or .parquet."),
    ] = None,
    force: o.ForceOutputOption = False,
    retrieve: o.RetrieveQueryOption = None,
    explain: Annotated[bool, typer.Option(help="Name the user's training items behind each recommendation.")] = False,
    context: o.ContextQueryOption = None,
    checkpoint: o.CheckpointOption = "latest",
    json_output: o.JsonOption = False,
    device: o.DeviceOption = o.Device.auto,
    store: o.StoreOption = DEFAULT_STORE,
) -> None:
    """Score every item in the catalogue for a user and show the top ones; or, for many users, write
    the top ones of each to a file."""
    from dlrm_cli.cli.parsing import parse_table_output, parse_user, read_id_list
    from dlrm_cli.errors import DlrmUsageError

    many = all_users or users is not None
    if sum((user is not None, all_users, users is not None)) != 1:
        raise DlrmUsageError("give one of --user ID, --users FILE or --all-users")
    if many:
        if explain:
            raise DlrmUsageError("--explain goes with --user: a file of many users' recommendations has no reasons")
        if output is None:
            raise DlrmUsageError("--all-users and --users write a file: give --output recs.csv (or .parquet)")
        output = parse_table_output(output, force)
        wanted = read_id_list(f"@{users}", "--users") if users is not None else None
        _recommend_many(store, checkpoint, device, wanted, top, exclude_seen, output, json_output, retrieve, context)
        return
    if output is not None:
        raise DlrmUsageError("--output goes with --all-users or --users; one user's ranking is shown, or --json")
    user = parse_user(user or "")
    from dlrm_cli.data.context import parse_assignments  # with torch, once the options are checked

    given = parse_assignments(context)

    from dlrm_cli.cli import tables, ui

    with tables.progress(json_output) as progress:
        progress(f"Loading checkpoint {checkpoint}")  # torch's imports included: seconds, before any answer
        from dlrm_cli.scoring.recommending import recommend
        from dlrm_cli.store.loading import open_model

        loaded = open_model(store, checkpoint, device)
        progress("Recommending")
        result = recommend(loaded, user, top, exclude_seen, retrieve, explain, given)
    if json_output:
        ui.print_json(result.to_dict())
        return
    tables.show_recommendation(result, user)


def _recommend_many(
    store: Path,
    checkpoint: str,
    device: str,
    users: list[str] | None,
    top: int,
    exclude_seen: bool,
    output: Path,
    json_output: bool,
    retrieve: int | None,
    context: str | None,
) -> None:
    from dlrm_cli.cli import tables, ui
    from dlrm_cli.data.context import parse_assignments
    from dlrm_cli.runtime.files import interrupted_writes
    from dlrm_cli.scoring.recommending import recommend_many
    from dlrm_cli.store.loading import open_model

    given = parse_assignments(context)
    with interrupted_writes(output), tables.progress(json_output) as progress:
        progress(f"Loading checkpoint {checkpoint}")
        loaded = open_model(store, checkpoint, device)
        result = recommend_many(
            loaded,
            users,
            top,
            exclude_seen,
            lambda done, total: progress("Recommending: users", done, total),
            retrieve,
            given,
        )
        progress(f"Writing {output.name}")
        rows = result.write(output)
    if json_output:
        ui.print_json(result.summary(output, rows, top))
        return
    tables.show_batch_recommendations(result, output, rows, top)
