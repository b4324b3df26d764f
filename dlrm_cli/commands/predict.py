"""``dlrm predict``: rank a list of items for one user."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlrm_cli.options import DEFAULT_STORE, CheckpointOption, DeviceOption, JsonOption, StoreOption

EXAMPLE = "Example: dlrm predict --user 42 --items 101,102,103"


def predict_command(
    user: Annotated[str, typer.Option(help="The user's id, as in the training data.")],
    items: Annotated[str, typer.Option(help="Comma-separated item ids to rank.")],
    checkpoint: CheckpointOption = "latest",
    json_output: JsonOption = False,
    device: DeviceOption = "cpu",  # type: ignore[assignment]
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Rank items for a user by predicted rating; the top one is the recommendation."""
    from dlrm_cli.parsing import parse_id_list, parse_user

    wanted = parse_id_list(items, "--items")
    user = parse_user(user)

    from dlrm_cli.inference import rank_items
    from dlrm_cli.loading import load_model
    from dlrm_cli.model import resolve_device
    from dlrm_cli.store import CheckpointStore

    loaded = load_model(CheckpointStore(Path(store)).load(checkpoint), resolve_device(getattr(device, "value", device)))
    ranking = rank_items(loaded, user, wanted)
    show_ranking(loaded, user, ranking, json_output, title=f"Predicted ratings for user {user}")


def show_ranking(loaded, user: str, ranking, json_output: bool, title: str, extra: dict | None = None) -> None:
    """The ranking as a table (top one marked as the recommendation) or one JSON document."""
    from rich.table import Table

    from dlrm_cli import ui

    ranked = ranking.items
    high = loaded.model.config.rating_max
    if json_output:
        ui.print_json(
            {
                "checkpoint": loaded.checkpoint.name,
                "user": user,
                **(extra or {}),
                "recommended": ranked[0].item if ranked else None,
                "user_unseen_in_training": ranking.user_unseen,
                "items": [
                    {
                        "rank": rank,
                        "item": entry.item,
                        "title": entry.title,
                        "rating": entry.rating,
                        "stars": ui.stars(entry.rating, high),
                        "unseen_in_training": entry.unseen,
                    }
                    for rank, entry in enumerate(ranked, start=1)
                ],
            }
        )
        return
    table = Table(title=f"{title} ({loaded.checkpoint.name})")
    table.add_column("#", justify="right")
    table.add_column("item")
    with_titles = any(entry.title for entry in ranked)
    if with_titles:
        table.add_column("title")
    table.add_column("rating", justify="right")
    table.add_column("stars")
    table.add_column("")
    for rank, entry in enumerate(ranked, start=1):
        cells = [str(rank), entry.item]
        if with_titles:
            cells.append(entry.title or "")
        note = "← recommended" if rank == 1 else ""
        if entry.unseen:
            note = (note + " (unseen in training)").strip()
        cells += [f"{entry.rating:.2f}", ui.stars(entry.rating, high), note]
        table.add_row(*cells, style="bold green" if rank == 1 else None)
    ui.out().print(table)
    if ranking.user_unseen:
        ui.err().print(f"Note: user {user} was not in the training data, so no history of theirs shapes this ranking")
    if ranking.unseen_items:
        listed = ", ".join(ranking.unseen_items)
        ui.err().print(f"Note: not in the training data (scored from side features only): item {listed}")
