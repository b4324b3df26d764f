"""``dlrm recommend``: the best items of the whole catalogue for one user."""

from __future__ import annotations

from typing import Annotated

import typer

from dlrm_cli import options as o

EXAMPLE = "Example: dlrm recommend --user 42 --top 10 --exclude-seen"


def recommend_command(
    user: o.UserOption,
    top: Annotated[int, typer.Option(min=1, help="How many items to show.")] = 10,
    exclude_seen: Annotated[bool, typer.Option(help="Leave out items the user rated in the training data.")] = False,
    checkpoint: o.CheckpointOption = "latest",
    json_output: o.JsonOption = False,
    device: o.DeviceOption = o.Device.cpu,
    store: o.StoreOption = o.DEFAULT_STORE,
) -> None:
    """Score every item in the catalogue for a user and show the top ones."""
    from dlrm_cli.parsing import parse_user

    user = parse_user(user)

    from dlrm_cli import ui
    from dlrm_cli.inference import recommend
    from dlrm_cli.loading import open_model

    result = recommend(open_model(store, checkpoint, device), user, top, exclude_seen)
    if json_output:
        ui.print_json(result.to_dict())
        return
    ranking = result.ranking
    ui.show_ranking(ranking, title=f"Top {len(ranking.items)} of {result.scored:,} items for user {user}")
    ui.err().print(f"Scored {result.scored:,} items in {result.seconds * 1000:.0f} ms")
