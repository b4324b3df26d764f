"""``dlrm predict``: rank a list of items for one user."""

from __future__ import annotations

from typing import Annotated

import typer

from dlrm_cli.cli import options as o
from dlrm_cli.config import DEFAULT_STORE

EXAMPLE = "Example: dlrm predict --user 42 --items 101,102,103   |   dlrm predict ... --context channel=app,hour=20"


def predict_command(
    user: o.UserOption,
    items: Annotated[
        str,
        typer.Option(help="Comma-separated item ids to rank, or @FILE: ids one per line (@- reads standard input)."),
    ],
    context: o.ContextQueryOption = None,
    checkpoint: o.CheckpointOption = "latest",
    json_output: o.JsonOption = False,
    device: o.DeviceOption = o.Device.cpu,
    store: o.StoreOption = DEFAULT_STORE,
) -> None:
    """Rank items for a user by predicted rating; the top one is the recommendation."""
    from dlrm_cli.cli.parsing import parse_user, read_id_list

    wanted = read_id_list(items, "--items")
    user = parse_user(user)
    from dlrm_cli.data.context import parse_assignments

    given = parse_assignments(context)

    from dlrm_cli.cli import tables, ui

    with tables.progress(json_output) as progress:
        progress(f"Loading checkpoint {checkpoint}")  # torch's imports included: seconds, before any answer
        from dlrm_cli.scoring.recommending import rank_items
        from dlrm_cli.store.loading import open_model

        loaded = open_model(store, checkpoint, device)
        progress("Scoring")
        ranking = rank_items(loaded, user, wanted, given)
    if json_output:
        ui.print_json(ranking.to_dict())
    else:
        tables.show_ranking(ranking, title=f"Predicted ratings for user {user}")
