"""Result tables of the commands that measure (``evaluate``, ``benchmark``) and the progress display of long
steps, on the consoles of ``ui``. Rich is imported inside the functions, torch never."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from dlrm_cli.cli import ui
from dlrm_cli.runtime.progress import Progress, progress_shown, silent


@contextlib.contextmanager
def progress(json_output: bool = False) -> Iterator[Progress]:
    """A transient display on stderr of the steps the core reports (``dlrm_cli.runtime.progress.Progress``):
    a bar with ``done/total`` for a step with a total, a spinner for one without. Each label is its own line;
    a spinner stops when the next step starts. Nothing is shown with ``--json`` or when stderr is not a
    terminal (``progress_shown``)."""
    if not progress_shown(json_output):
        yield silent
        return
    import rich.progress as rp
    from rich.console import Console

    console = Console(stderr=True, highlight=False, force_terminal=True)  # the rule above has decided
    columns = (rp.SpinnerColumn(), rp.TextColumn("[bold]{task.description}"), rp.BarColumn())
    count = rp.TextColumn("{task.fields[count]}")
    bar = rp.Progress(*columns, count, rp.TimeElapsedColumn(), console=console, transient=True)
    tasks: dict[str, Any] = {}
    current: list[str] = []

    def report(label: str, done: int = 0, total: int = 0) -> None:
        if not tasks:
            bar.start()
        if current != [label]:  # a new step: the spinners of the steps before it stop
            for task in bar.tasks:
                if task.total is None:
                    bar.update(task.id, visible=False)
            if label in tasks:  # a step that comes again starts its line afresh
                bar.reset(tasks[label], visible=True)
            else:
                tasks[label] = bar.add_task(label, total=total or None, count="")
            current[:] = [label]
        count = f"{done:,}/{total:,}" if total else ""
        bar.update(tasks[label], completed=done, total=total or None, count=count)

    try:
        yield report
    finally:
        if bar.live.is_started:  # stopping one never started would still end the line on a non-terminal
            bar.stop()


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
    who = f"{ranking.users:,} users"
    if ranking.of_users is not None:
        who += f" (SAMPLED uniformly from {ranking.of_users:,})"
    out.print(
        f"Ranking the {ranking.split} split: {who} with a held-out {held_out} ({ranking.skipped:,} without one skipped)"
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
    for name, why in ranking.left_out.items():
        out.print(f"{name}: {why}")


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


def show_ranking(ranking: Any, title: str) -> None:
    """``predict`` and ``recommend``: a ranking as a table, the top one marked as the recommendation, each item
    with its title and side values where known, and ``--explain``'s reasons; notes on unseen ids to stderr."""
    from rich.markup import escape
    from rich.table import Table

    from dlrm_cli.scoring.recommending import stars

    ranked = ranking.items
    table = Table(title=escape(f"{title} ({ranking.checkpoint})"))  # ids and titles are data, not Rich markup
    table.add_column("#", justify="right")
    table.add_column("item")
    labelled = any(entry.label for entry in ranked)
    if labelled:
        table.add_column("title")
    rated = ranking.scored_as == "rating"  # else a ranking-only model's score: no stars to show
    table.add_column(ranking.scored_as, justify="right")
    if rated:
        table.add_column("stars")
    scored = any(entry.score is not None for entry in ranked)  # a two-headed model's order, shown
    if scored:
        table.add_column("score", justify="right")
    explained = any(entry.because is not None for entry in ranked)
    if explained:
        table.add_column("because you rated")
    table.add_column("")
    for rank, entry in enumerate(ranked, start=1):
        cells = [str(rank), escape(entry.item)] + ([escape(entry.label)] if labelled else [])
        note = "← recommended" if rank == 1 else ""
        if entry.unseen:
            note = (note + " (unseen in training)").strip()
        cells += [f"{entry.rating:.2f}", *([stars(entry.rating, ranking.rating_max)] if rated else [])]
        cells += [
            *([f"{entry.score:.2f}"] if scored else []),
            *([escape(_reasons(entry.because))] if explained else []),
        ]
        table.add_row(*cells, note, style="bold green" if rank == 1 else None)
    ui.out().print(table)
    if ranking.context is not None:
        ui.out().print(context_line(ranking.context), markup=False, highlight=False)
    if ranking.user_unseen:
        ui.err().print(
            f"Note: user {ranking.user} was not in the training data, so no history of theirs shapes this ranking",
            markup=False,
        )
    if ranking.unseen_items:
        listed = ", ".join(ranking.unseen_items)
        ui.err().print(f"Note: not in the training data (scored from side features only): item {listed}", markup=False)


def _reasons(because: list[Any] | None) -> str:
    """``--explain``'s reasons for one item: ``Alien (0.31), 12 (0.20)``; "" when none."""
    return ", ".join(f"{reason.title or reason.item} ({reason.weight:.2f})" for reason in because or [])


def context_line(context: Any) -> str:
    """The context a model with context columns scored in (``recommending.Context``), each column that was
    not given marked with where its default comes from: ``Context: channel=app, hour=13.4 (default: ...)``."""
    parts = []
    for name, value in context.values.items():
        numeric = isinstance(value, float)
        part = f"{name}={value:g}" if numeric else f"{name}={value}"
        if name in context.defaulted and not numeric and not value:
            part += " (default: none, no value is typical)"
        elif name in context.defaulted:
            part += " (default: the training mean)" if numeric else " (default: the most frequent training value)"
        elif name in context.unseen:
            part += " (never seen in training)"
        parts.append(part)
    return "Context: " + ", ".join(parts)


def show_batch_recommendations(result: Any, output: Any, rows: int, top: int) -> None:
    """``recommend --all-users`` and ``--users``: what was written where, and the context it was scored in."""
    seen = "excluding" if result.exclude_seen else "including"
    ui.out().print(
        f"Wrote {rows:,} recommendations for {len(result.users):,} users to {output} "
        f"({result.checkpoint}, top {top}, {seen} seen items, {result.seconds:.1f} s)"
    )
    if result.context is not None:
        ui.out().print(context_line(result.context), markup=False, highlight=False)
        if result.same_in_any_context:
            ui.err().print("Note: this ranker reads no context: these recommendations are the same in any context")
    if result.unknown_users:
        ui.err().print(
            f"Note: not in the training data (ranked for an average user): {', '.join(result.unknown_users[:10])}"
        )


def show_recommendation(result: Any, user: str) -> None:
    """``recommend --user``: the table, then how many items were scored in how long."""
    ranking = result.ranking
    show_ranking(ranking, title=f"Top {len(ranking.items)} of {result.scored:,} items for user {user}")
    ui.err().print(f"Scored {result.scored:,} items in {result.seconds * 1000:.0f} ms")
