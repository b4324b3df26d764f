"""Result tables of the commands that measure (``evaluate``, ``benchmark``) and the progress bars of long
runs over users, on the consoles of ``ui``. Rich is imported inside the functions, torch never."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from dlrm_cli.cli import ui


@contextlib.contextmanager
def users_progress(label: str) -> Iterator[Any]:
    """A transient progress display on stderr whose bars count users: ``label`` (a Rich format string of the
    task), the bar, ``done/total users`` and the time elapsed. Yields the ``rich.progress.Progress``, not
    started: ``start()`` it when there is something to show (leaving the block stops it)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(label), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} users"))
    bar = Progress(*columns, TimeElapsedColumn(), console=ui.err(), transient=True)
    try:
        yield bar
    finally:
        if bar.live.is_started:  # stopping one never started would still end the line on a non-terminal
            bar.stop()


@contextlib.contextmanager
def ranking_progress() -> Iterator[Callable[[str, int, int], None]]:
    """``progress(name, done, total)`` for ``evaluate --k``: one bar per model ranked, shown from its first
    report on."""
    with users_progress("Ranking: {task.description}") as bar:
        tasks: dict[str, Any] = {}

        def progress(name: str, done: int, total: int) -> None:
            if not tasks:
                bar.start()
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        yield progress


def show_evaluation(report: Any, where: str) -> None:
    """``dlrm evaluate``: the error metrics (a model with a rating head), the ranking head's AUC, a note when
    the rows overlap training, and the top-K tables (``--k``)."""
    from rich.table import Table

    result = report.evaluation
    if report.rated:  # a model without a rating head has no rating error to show
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
            f"Note: {result.training_overlap:,} of these {result.count:,} "
            f"{'interactions' if report.implicit else 'ratings'} are (user, item) pairs the "
            "checkpoint trained on; the figures flatter it"
        )
    if report.ranking is not None:
        show_ranking_evaluation(report.ranking, report.implicit)


def show_checkpoints(listing: Any) -> None:
    """``dlrm checkpoints``: one row per checkpoint, with the validation metric that chose its epoch (RMSE,
    or NDCG@10 for a model with only a ranking head) and its aliases; one that cannot be read says why."""
    from rich.table import Table

    from dlrm_cli.store.record import Selection

    table = Table(title=f"Checkpoints in {listing.store}")
    for column in ("name", "created", "data", "epochs", "chosen by", ""):
        table.add_column(column, justify="right" if column == "epochs" else "left", no_wrap=column == "name")
    for row in listing.checkpoints:
        created = (row.created or "")[:19].replace("T", " ")
        if row.problem:
            table.add_row(row.name, created, "", "", "", f"[red]unusable: {row.problem}")
            continue
        labels = [alias for alias in ("latest", "best") if getattr(row, alias)]
        if not row.complete:
            labels.append("[yellow]incomplete")
        chosen = Selection(**row.selection).label if row.selection else ""
        table.add_row(row.name, created, row.data or "?", str(row.epochs), chosen, ", ".join(labels))
    ui.out().print(table)


RANKING_COLUMNS = ("NDCG@{k}", "Recall@{k}", "Precision@{k}", "HitRate@{k}", "MAP@{k}", "MRR", "coverage@{k}")


def show_ranking_evaluation(ranking: Any, implicit: bool) -> None:
    """``evaluate --k``: who was ranked among which candidates, then one table per cut-off."""
    from rich.table import Table

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
    if ranking.retrieval is not None:
        generator, count = ranking.retrieval["generator"], ranking.retrieval["candidates"]
        out.print(
            f"Two stages: {generator} proposes {count} items per user, DLRM orders them; Recall@{count} of "
            f"{generator} alone, the ranker's ceiling: {ranking.retrieval['recall']:.3f}"
        )
    for k in ranking.ks:
        table = Table(title=f"Top {k}")
        for column in ("model", *(name.format(k=k) for name in RANKING_COLUMNS), f"cold@{k}", "seconds"):
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


MODEL_SIZES = {
    "default": " (embeddings 32, MLPs 64 and 64-32, bags, biases)",
    "movielens": " (the default model with bags of ~160 ratings)",
    "seed": " (embeddings 64, MLPs 32-64, 128-64)",
}
MODEL_DATA = {"seed": "1,000 users and 500 items", "movielens": "3,000 users, 3,600 items, 487,650 ratings"}


def show_benchmark(report: Any) -> None:
    """``dlrm benchmark``: training rates per model and path, the concurrency figure, inference latency,
    evaluate throughput and MLP efficiency."""
    from rich.table import Table

    out, s = ui.out(), report.settings
    for model, rates in report.train.items():
        users = MODEL_DATA.get(model, f"{s['rows']:,}-row user and item tables")
        table = Table(title=f"Training, {model} model{MODEL_SIZES.get(model, '')}, batch {s['batch_size']}, {users}")
        for column, justify in (("path", "left"), ("samples/s", "right"), ("fused is", "right")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        fused = rates.get("fused", {}).get("train_samples_per_s")
        for path, figures in rates.items():
            rate = figures["train_samples_per_s"]
            table.add_row(path, f"{rate:,.0f}", f"{fused / rate:.1f}x" if fused and path != "fused" else "")
        out.print(table)
        if fused:
            ceiling = rates["fused"]["ceiling_samples_per_s"]
            out.print(
                f"  fused is {100 * fused / ceiling:.0f}% of this model's matmul-bound ceiling "
                f"({ceiling:,.0f} samples/s: its MLPs' work at the rate of a large matmul)"
            )
    c = report.concurrency
    if c:
        each = " + ".join(f"{rate:,.0f}" for rate in c["each_samples_per_s"])
        out.print(
            f"{c['processes']} training processes at once ({c['model']} model, fused): {each} = "
            f"{c['total_samples_per_s']:,.0f} samples/s, {c['total_over_solo']:.2f}x one alone "
            f"({c['solo_samples_per_s']:,.0f})"
        )
    latency = Table(title="Inference (eager model, torch.inference_mode)")
    for column in ("batch", "p50 ms", "p99 ms", "ratings/s at p50"):
        latency.add_column(column, justify="right")
    for batch, figures in report.latency.items():
        p50, p99 = figures["p50_ms"], figures["p99_ms"]
        latency.add_row(batch, f"{p50:.2f}", f"{p99:.2f}", f"{int(batch) / p50 * 1e3:,.0f}")
    out.print(latency)
    e, m = report.evaluate, report.mlp
    out.print(f"Evaluate: {e['ratings']:,} ratings in {e['seconds']:.2f} s ({e['ratings_per_s']:,.0f} ratings/s)")
    out.print(
        f"MLP work at batch {m['mlp_batch']:,}: {m['mlp_gflops']:.1f} GFLOP/s = "
        f"{100 * m['mlp_fraction_of_matmul']:.0f}% of a 2048x2048 matmul ({m['matmul_gflops']:.1f} GFLOP/s), "
        f"{s['threads']} threads"
    )
