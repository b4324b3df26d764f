"""Terminal output: results on stdout, progress and status on stderr."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console

from dlrm_cli.runtime.memory import rank_peaks
from dlrm_cli.training.advice import VALIDATION_COLUMNS, validation_figures

SPARK = "▁▂▃▄▅▆▇█"


def out() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def err() -> Console:
    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def sparkline(values: list[float]) -> str:
    """A one-line chart of a series: lowest value ▁, highest █."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high - low < 1e-12:
        return SPARK[0] * len(values)
    return "".join(SPARK[round((v - low) / (high - low) * (len(SPARK) - 1))] for v in values)


def fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def history_table(history: list[dict[str, Any]], title: str) -> Any:
    """One row per epoch: train loss, the validation figures (RMSE and MAE, NDCG@10 with a ranking head),
    learning rate, throughput (rated pairs per second)."""
    from rich.table import Table

    shown = [(key, label) for key, label in VALIDATION_COLUMNS if any(key in record for record in history)]
    table = Table(title=title)
    for column in ("epoch", "train loss", *(label for _, label in shown), "lr", "samples/s"):
        table.add_column(column, justify="right")
    for record in history:
        table.add_row(
            str(record["epoch"]),
            fmt(record["train_loss"]),
            *(fmt(record.get(key)) for key, _ in shown),
            f"{record['lr']:.2e}",
            f"{record['samples_per_s']:,.0f}",
        )
    return table


LINE_SECONDS = 30.0


class RichProgress:
    """The training display (a ``TrainingObserver``): a spinner while data loads, then a progress bar with
    epoch, batches, running loss and learning rate, and one line per finished epoch. Use it as a context
    manager, so that the live display always stops."""

    def __init__(self, console: Console, show_plan: bool = False) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = console
        self.show_plan = show_plan
        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]}epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("batches · loss {task.fields[loss]:.4f} · lr {task.fields[lr]:.2e}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            # Each redraw holds the interpreter from training: 4 a second on a terminal (Rich's default is 10,
            # about 6% of a small model's training), none where the bar is not drawn.
            refresh_per_second=4,
            auto_refresh=console.is_terminal,
        )
        self.status: Any = None
        self.task: Any = None
        self.loss = 0.0
        self.steps = 0
        # Not on a terminal (a log, CI), the bar is not drawn: a line every LINE_SECONDS shows progress instead.
        self.lines = not console.is_terminal
        self.last_line = time.monotonic()
        self.epoch, self.lr = "", 0.0
        self.stage = ""  # "ranker " once the second stage trains

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_status()
        self.progress.stop()

    def _stop_status(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def data_loading(self) -> None:
        self.status = self.console.status("Loading data…")
        self.status.start()

    def data_loaded(self, dataset: Any, processes: int) -> None:
        self._stop_status()
        entities = []
        for table, rows, kind in ((dataset.catalog.users, dataset.train.user, "users"),
                                  (dataset.catalog.items, dataset.train.item, "items")):  # fmt: skip
            rated = len(rows.unique())
            listed = f" ({len(table):,} in the side files)" if len(table) != rated else ""
            entities.append(f"{rated:,} {kind}{listed}")
        rows = "interactions" if dataset.catalog.implicit else "ratings"
        unrated = " (no ratings)" if dataset.catalog.implicit else ""
        self.console.print(
            f"Data: {dataset.source.kind} — {len(dataset.train):,} train, {len(dataset.validation):,} "
            f"validation, {len(dataset.test):,} test {rows}{unrated}; {entities[0]} and {entities[1]} with "
            f"training {rows}" + (f"; {processes} processes" if processes > 1 else "")
        )
        context = dataset.catalog.context
        if context is not None:
            self.console.print(
                f"Context columns (a value per {rows[:-1]}, not per user or item): {', '.join(context.names)}",
                markup=False,
            )

    def resumed(self, name: str, epoch: int) -> None:
        self.console.print(f"Resuming {name} after epoch {epoch}")

    def planned(self, shards: list[Any]) -> None:
        if self.show_plan:
            self.console.print(plan_table(shards))

    def epoch_started(self, epoch: int, epochs: int, batches: int, lr: float) -> None:
        if self.task is None:
            self.progress.start()
        else:
            self.progress.remove_task(self.task)
        self.loss, self.steps = 0.0, 0
        self.epoch, self.lr, self.last_line = f"{epoch}/{epochs}", lr, time.monotonic()
        self.task = self.progress.add_task("train", total=batches, epoch=self.epoch, stage=self.stage, loss=0.0, lr=lr)

    def batch_done(self, loss: float) -> None:
        self.steps += 1
        self.loss += (loss - self.loss) / min(self.steps, 100)  # running mean over the last ~100 batches
        total = self.progress.tasks[-1].total or 0
        if self.steps % 10 == 0 or self.steps == total:
            self.progress.update(self.task, completed=self.steps, loss=self.loss)
        if self.lines and time.monotonic() - self.last_line >= LINE_SECONDS and self.steps < total:
            self.last_line = time.monotonic()
            self.console.print(
                f"{self.stage}epoch {self.epoch}: batch {self.steps:,}/{total:,} ({100 * self.steps / total:.0f}%), "
                f"loss {self.loss:.4f}, lr {self.lr:.2e}"
            )

    def epoch_done(self, record: dict[str, float]) -> None:
        figures = validation_figures(record).replace(
            "val NDCG@10", "val NDCG@10 (two stages)" if self.stage else "val NDCG@10"
        )
        peaks = rank_peaks(record)
        memory = f"; peak memory by rank {', '.join(f'{peak:.1f}' for peak in peaks)} GiB" if peaks else ""
        self.console.print(
            f"{self.stage}epoch {record['epoch']}: train loss {record['train_loss']:.4f}, {figures}, "
            f"lr {record['lr']:.2e}, {record['samples_per_s']:,.0f} samples/s{memory}"
        )

    def stage_started(self, description: str) -> None:
        self.stage = "ranker "
        self.console.print(description)

    def step_done(self, label: str, done: int, total: int) -> None:
        """A long step between epochs (the ranker's training pairs): a line for each part done."""
        self.console.print(f"{label}: {done}/{total}")

    def notice(self, text: str) -> None:
        self.console.print(f"[yellow]Warning:[/] {text}", markup=True)


def plan_table(shards: list[Any]) -> Any:
    """How the planner placed each embedding table."""
    from rich.table import Table

    table = Table(title="Sharding plan")
    for column in ("table", "sharding", "ranks"):
        table.add_column(column)
    for shard in shards:
        table.add_row(shard.table, shard.sharding, ",".join(map(str, shard.ranks)))
    return table


def show_training_summary(result: Any) -> None:
    """The history table, the validation RMSE beside its references, advice on a run that ended still
    improving, and the checkpoint's name. On a terminal that showed the epoch lines (stderr) just above, the
    table would repeat them: it is printed only where stdout is read apart from them (a file, a pipe)."""
    console = out()
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        console.print(history_table(result.history, f"Training summary — {result.name}"))
    ranked = "ndcg" in result.validation
    chosen_by_ndcg = "rmse" not in result.validation
    took = f"trained in {result.seconds:.1f} s"
    if "rmse" in result.validation:
        curve = " " + sparkline([record["val_rmse"] for record in result.history])
        floor = f", noise floor {result.noise_floor['rmse']:.4f}" if result.noise_floor else ""
        console.print(
            f"Validation RMSE {result.validation['rmse']:.4f} (best epoch {result.best_epoch}){curve} "
            f"(global-mean baseline {result.baseline['rmse']:.4f}{floor})" + ("" if ranked else f"; {took}")
        )
    if ranked:
        curve = sparkline([record["val_ndcg"] for record in result.history])
        console.print(f"Validation NDCG@10 {result.validation['ndcg']:.4f} (epoch {result.best_epoch}) {curve}; {took}")
    if result.stopped_early:
        last = int(result.history[-1]["epoch"])
        figure = "NDCG@10" if chosen_by_ndcg else "RMSE"
        console.print(
            f"Stopped early after epoch {last}: {result.stopped_early} epochs without a better validation {figure} "
            f"(--patience {result.stopped_early})"
        )
    if result.stages:
        alone, both, blend = result.stages["generator_ndcg"], result.stages["ndcg"], result.stages["blend"]
        change = f" ({both / alone - 1:+.1%})" if alone > 0 else ""
        order = f"; order = {1 - blend:g} x ranker + {blend:g} x retrieval z-score" if blend else ""
        console.print(f"Two stages: validation NDCG@10 {both:.4f}, retrieval alone {alone:.4f}{change}{order}")
    for line in result.advice:
        err().print(f"[yellow]Note:[/] {line}", markup=True)
    console.print(f"Saved checkpoint {result.name}")
