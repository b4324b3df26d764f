"""``dlrm evaluate``: error metrics of a checkpoint on a split of its data."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dlrm_cli.cli.options import CheckpointOption, Device, DeviceOption, JsonOption, StoreOption
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
    baselines: Annotated[bool, typer.Option(help="With --k: also rank with the baselines.")] = True,
    json_output: JsonOption = False,
    device: DeviceOption = Device.auto,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Report MSE, RMSE and MAE beside the global-mean baseline and the noise floor; with --k, top-K
    ranking metrics beside ranking baselines."""
    from dlrm_cli.cli import ui
    from dlrm_cli.config import relevant_rating
    from dlrm_cli.errors import DlrmUsageError
    from dlrm_cli.scoring.evaluation import SPLITS, evaluate, source_to_score
    from dlrm_cli.store.loading import open_model

    if split not in SPLITS:
        raise DlrmUsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    cutoffs = None
    if k is not None:
        from dlrm_cli.cli.parsing import parse_cutoffs

        cutoffs = parse_cutoffs(k)
        if data is not None:
            raise DlrmUsageError("--k ranks a split of the checkpoint's own data; leave out --data")
    loaded = open_model(store, checkpoint, device)
    implicit, rated = loaded.catalog.implicit, "rating" in loaded.model.config.heads
    result = evaluate(loaded, split, source_to_score(loaded, data) if data is not None else None)
    ranking = None
    if cutoffs is not None:
        threshold = relevant if relevant is not None else relevant_rating(loaded.catalog.rating_max)
        ranking = _rank(loaded, split, cutoffs, threshold, candidates, baselines)
    if json_output:
        ui.print_json({**result.to_dict(), **({"ranking": ranking.to_dict()} if ranking else {})})
        return
    from rich.table import Table

    where = f"the {split} split" if data is None else data
    if rated:  # a model without a rating head has no rating error to show
        table = Table(title=f"{result.checkpoint} on {where} ({result.count:,} ratings)")
        for column in ("", "MSE", "RMSE", "MAE"):
            table.add_column(column, justify="left" if not column else "right")
        rows = [("DLRM", result.model), ("global-mean baseline", result.global_mean_baseline)]
        if result.noise_floor is not None:
            rows.append(("noise floor (perfect model)", result.noise_floor))
        for label, metrics in rows:
            table.add_row(label, ui.fmt(metrics["mse"]), ui.fmt(metrics["rmse"]), ui.fmt(metrics["mae"]))
        ui.out().print(table)
    if result.interactions is not None:
        figures = result.interactions
        table = Table(title=f"The ranking head of {result.checkpoint} on {where}")
        for column in ("", "held-out interactions", "sampled negatives each", "AUC", "log loss"):
            table.add_column(column, justify="left" if not column else "right")
        negatives = f"{figures['negatives_per_interaction']:g}, uniformly"
        table.add_row("DLRM", f"{result.count:,}", negatives, ui.fmt(figures["auc"]), ui.fmt(figures["log_loss"]))
        ui.out().print(table)
    if result.training_overlap:
        ui.err().print(
            f"Note: {result.training_overlap:,} of these {result.count:,} {'interactions' if implicit else 'ratings'} "
            "are (user, item) pairs the "
            "checkpoint trained on; the figures flatter it"
        )
    if ranking is not None:
        _show_ranking(ranking, implicit)


def _rank(
    loaded: Any, split: str, cutoffs: tuple[int, ...], relevant: float, candidates: int | None, baselines: bool
) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from dlrm_cli.cli import ui
    from dlrm_cli.scoring.evaluation import rank_evaluation

    columns = (
        TextColumn("Ranking: {task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} users"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=ui.err(), transient=True) as bar:
        tasks: dict[str, object] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)  # type: ignore[arg-type]

        return rank_evaluation(loaded, split, cutoffs, relevant, candidates, baselines, progress)


def _show_ranking(ranking: Any, implicit: bool) -> None:
    from rich.table import Table

    from dlrm_cli.cli import ui

    out = ui.out()
    held_out = "interaction" if implicit else f"rating >= {ranking.relevant:g}"
    out.print(
        f"Ranking the {ranking.split} split: {ranking.users:,} users with a held-out {held_out} "
        f"({ranking.skipped:,} without one skipped)"
    )
    if ranking.sampled:
        out.print(f"Candidates: {ranking.sampled} sampled items per user, besides its relevant ones (SAMPLED)")
    else:
        out.print(
            f"Candidates: all {ranking.candidates:,} items seen in training, minus each user's own (full ranking)"
        )
    for k in ranking.ks:
        table = Table(title=f"Top {k}")
        for column in (
            "model",
            f"NDCG@{k}",
            f"Recall@{k}",
            f"Precision@{k}",
            f"HitRate@{k}",
            f"MAP@{k}",
            "MRR",
            f"coverage@{k}",
            f"cold@{k}",
            "seconds",
        ):
            table.add_column(column, justify="left" if column == "model" else "right")
        for name, figures in ranking.models.items():
            at = figures[f"@{k}"]
            table.add_row(
                name,
                *(f"{at[key]:.3f}" for key in ("ndcg", "recall", "precision", "hit_rate", "map")),
                f"{figures['mrr']:.3f}",
                f"{at['coverage']:.3f}",
                f"{at['cold']:.3f}",
                f"{ranking.seconds[name]:.1f}",
            )
        out.print(table)
