"""``dlrm recommend``: the best items of the whole catalogue for one user."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from dlrm_cli.options import DEFAULT_STORE, CheckpointOption, DeviceOption, JsonOption, StoreOption

EXAMPLE = "Example: dlrm recommend --user 42 --top 10 --exclude-seen"


def recommend_command(
    user: Annotated[str, typer.Option(help="The user's id, as in the training data.")],
    top: Annotated[int, typer.Option(min=1, help="How many items to show.")] = 10,
    exclude_seen: Annotated[bool, typer.Option(help="Leave out items the user rated in the training data.")] = False,
    checkpoint: CheckpointOption = "latest",
    json_output: JsonOption = False,
    device: DeviceOption = "cpu",  # type: ignore[assignment]
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Score every item in the catalogue for a user and show the top ones."""
    from dlrm_cli.parsing import parse_user

    user = parse_user(user)
    from dlrm_cli import ui
    from dlrm_cli.commands.predict import show_ranking
    from dlrm_cli.inference import recommend
    from dlrm_cli.loading import load_model
    from dlrm_cli.model import resolve_device
    from dlrm_cli.store import CheckpointStore

    loaded = load_model(CheckpointStore(Path(store)).load(checkpoint), resolve_device(getattr(device, "value", device)))
    started = time.perf_counter()
    ranking, scored = recommend(loaded, user, top, exclude_seen)
    seconds = time.perf_counter() - started
    show_ranking(
        loaded,
        user,
        ranking,
        json_output,
        title=f"Top {len(ranking.items)} of {scored:,} items for user {user}",
        extra={"scored": scored, "seconds": seconds, "exclude_seen": exclude_seen},
    )
    if not json_output:
        ui.err().print(f"Scored {scored:,} items in {seconds * 1000:.0f} ms")
