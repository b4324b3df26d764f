"""``dlrm train``: parse options, run the training core, show progress and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dlrm_cli.options import DEFAULT_STORE, DeviceOption, Embeddings, SparseOptimizer, StoreOption, positive
from dlrm_cli.store import CheckpointStore

EXAMPLE = "Example: dlrm train --epochs 10 --batch-size 256 --name first-run"
SYNTH = "Synthetic data"
DIST = "Distributed"
OPT = "Optimization"
DATA = "Data"
CSV = "CSV columns"
TRAIN_FIELDS = (
    "epochs", "batch_size", "lr", "lr_step", "lr_gamma", "weight_decay", "seed", "device", "embedding_dim",
    "embeddings", "sparse_optimizer", "sparse_lr", "embedding_l2", "threads", "patience", "dropout",
    "bottom_mlp", "top_mlp",
)  # fmt: skip


def train_command(
    ctx: typer.Context,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training rows.")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Ratings per optimizer step.")] = 256,
    lr: Annotated[float, typer.Option(callback=positive, help="Adam learning rate.")] = 1e-3,
    lr_step: Annotated[int, typer.Option(min=1, help="Epochs between learning-rate decays (StepLR).")] = 5,
    lr_gamma: Annotated[float, typer.Option(max=1.0, callback=positive, help="Learning-rate decay factor.")] = 0.5,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="L2 penalty on all weights.")] = 0.0,
    embedding_dim: Annotated[
        int, typer.Option(min=1, help="Size of every embedding (and the bottom MLP's output).")
    ] = 128,
    embeddings: Annotated[
        Embeddings,
        typer.Option(help="fused: FBGEMM kernels update only the rows used; plain: Adam on all.", rich_help_panel=OPT),
    ] = Embeddings.fused,
    sparse_optimizer: Annotated[
        SparseOptimizer, typer.Option(help="Fused optimizer for the embedding tables.", rich_help_panel=OPT)
    ] = SparseOptimizer.adagrad,
    sparse_lr: Annotated[
        float, typer.Option(callback=positive, help="Learning rate of the fused table optimizer.", rich_help_panel=OPT)
    ] = 0.2,
    embedding_l2: Annotated[
        float,
        typer.Option(
            min=0.0, help="L2 penalty on the embeddings each batch looks up (regularisation).", rich_help_panel=OPT
        ),
    ] = 1e-3,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch (default: one per core).")] = None,
    seed: Annotated[
        int, typer.Option(min=0, max=2**32 - 1, help="Seed for weights, data order and synthetic data.")
    ] = 0,
    name: Annotated[str | None, typer.Option(help="Checkpoint name (default: DATA-DATE-TIME).")] = None,
    data: Annotated[
        str, typer.Option(help="Ratings: synthetic, movielens:DIR or csv:FILE.", rich_help_panel=DATA)
    ] = "synthetic",
    split: Annotated[
        str | None,
        typer.Option(help="Test rows: random:0.1, temporal:0.1 or files:TRAIN,TEST.", rich_help_panel=DATA),
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Training rows held out for validation.", rich_help_panel=DATA)
    ] = 0.05,
    user_col: Annotated[str | None, typer.Option(help="CSV: user id column.", rich_help_panel=CSV)] = None,
    item_col: Annotated[str | None, typer.Option(help="CSV: item id column.", rich_help_panel=CSV)] = None,
    rating_col: Annotated[str | None, typer.Option(help="CSV: rating column.", rich_help_panel=CSV)] = None,
    dense_cols: Annotated[str | None, typer.Option(help="CSV: numeric side columns, a,b.", rich_help_panel=CSV)] = None,
    sparse_cols: Annotated[
        str | None, typer.Option(help="CSV: categorical side columns, a,b (values may be x|y).", rich_help_panel=CSV)
    ] = None,
    time_col: Annotated[str | None, typer.Option(help="CSV: timestamp column.", rich_help_panel=CSV)] = None,
    rating_range: Annotated[
        str | None,
        typer.Option(help="CSV: declared rating scale LOW,HIGH (default: the data's).", rich_help_panel=CSV),
    ] = None,
    users: Annotated[int | None, typer.Option(min=1, help="Synthetic users.", rich_help_panel=SYNTH)] = None,
    items: Annotated[int | None, typer.Option(min=1, help="Synthetic items.", rich_help_panel=SYNTH)] = None,
    ratings: Annotated[int | None, typer.Option(min=10, help="Synthetic ratings.", rich_help_panel=SYNTH)] = None,
    noise: Annotated[
        float | None, typer.Option(min=0.0, help="Synthetic rating noise (std).", rich_help_panel=SYNTH)
    ] = None,
    bottom_mlp: Annotated[
        str, typer.Option(help="Bottom MLP hidden sizes; it then ends at --embedding-dim.", rich_help_panel=OPT)
    ] = "512,256",
    top_mlp: Annotated[str, typer.Option(help="Top MLP hidden sizes, before the output.", rich_help_panel=OPT)] = (
        "512,256"
    ),
    dropout: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="Dropout on the top MLP's input.", rich_help_panel=OPT)
    ] = 0.0,
    patience: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many epochs without a better validation RMSE.")
    ] = None,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Save the run's checkpoint every N epochs.")] = 1,
    nproc_per_node: Annotated[
        int, typer.Option(min=1, help="Train on N local processes, launched through torchrun.", rich_help_panel=DIST)
    ] = 1,
    print_plan: Annotated[
        bool, typer.Option(help="Show how the embedding tables are sharded over the ranks.", rich_help_panel=DIST)
    ] = False,
    resume: Annotated[
        str | None, typer.Option(help="Continue checkpoint NAME from its last completed epoch (see --epochs).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Read training options from a TOML file; command-line options win.")
    ] = None,
    print_config: Annotated[bool, typer.Option(help="Print the effective options as TOML and exit.")] = False,
    device: DeviceOption = "auto",  # type: ignore[assignment]
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Train a DLRM and save it as a checkpoint."""
    from dlrm_cli.distributed import launched_by_torchrun
    from dlrm_cli.settings import effective_options, given_on_command_line, to_toml

    options = effective_options(ctx, config, PRESETS)
    given = given_on_command_line(ctx)
    if print_config:
        typer.echo(to_toml(options), nl=False)
        return
    if options["nproc_per_node"] > 1 and not launched_by_torchrun():
        from dlrm_cli.launch import launch

        kept = {key: options[key] for key in ("epochs", "threads", "device", "checkpoint_every") if key in given}
        raise typer.Exit(launch(options, resume, kept))
    if resume is not None:
        _resume(options, given, resume)
        return
    source, settings, name = _prepare(options, given)
    run(source, settings, CheckpointStore(Path(options["store"])), name, options["checkpoint_every"], options)


# Settings chosen on validation rows of the MovieLens 1M subset (never its test rows); see the README's
# accuracy benchmark. They apply to --data movielens: unless the command line or --config says otherwise.
PRESETS: dict[str, dict[str, Any]] = {
    "movielens": {
        "epochs": 10,
        "patience": 2,
        "lr": 3e-4,
        "sparse_optimizer": "adagrad",
        "sparse_lr": 0.05,
        "embedding_l2": 3e-3,
        "bottom_mlp": "64",
        "top_mlp": "64,32",
    },
}


def _prepare(o: dict[str, Any], given: set[str]) -> tuple[dict[str, Any], Any, str | None]:
    from dlrm_cli.config import TrainConfig
    from dlrm_cli.data import parse_data_option
    from dlrm_cli.errors import DlrmUsageError
    from dlrm_cli.store import validate_name

    checkpoints = CheckpointStore(Path(o["store"]))
    name = o["name"]
    if name is not None:
        validate_name(name)
        if checkpoints.exists(name):
            raise DlrmUsageError(f"checkpoint {name} already exists in {checkpoints.root}; choose another --name")
    csv_options = {key: o[f"{key}_col"] for key in ("user", "item", "rating", "time")}
    csv_options.update(dense=o["dense_cols"], sparse=o["sparse_cols"], rating_range=o["rating_range"])
    columns = _csv_columns(csv_options) if any(v is not None for v in csv_options.values()) else None
    if columns is None and o["data"].startswith("csv:"):
        columns = {}
    source = parse_data_option(
        o["data"], split=o["split"], seed=o["seed"], validation=o["val_fraction"], columns=columns
    )
    synthetic = {key: o[key] for key in ("users", "items", "ratings", "noise") if o[key] is not None}
    if synthetic and source["kind"] != "synthetic":
        raise DlrmUsageError(f"--{next(iter(synthetic))} applies only to --data synthetic")
    if source["kind"] == "synthetic":
        source.update(synthetic, seed=o["seed"])
    if o["embeddings"] == "plain" and "sparse_lr" in given:
        raise DlrmUsageError("--sparse-lr applies to --embeddings fused; the plain path trains tables with --lr")
    checkpoints.ensure_writable()
    for key in ("bottom_mlp", "top_mlp"):
        o = {**o, key: _sizes(o[key], f"--{key.replace('_', '-')}")}
    settings = TrainConfig(**{key: o[key] for key in TRAIN_FIELDS})
    return source, settings, name


def _sizes(text: str | tuple, option: str) -> tuple[int, ...]:
    from dlrm_cli.errors import DlrmUsageError

    if isinstance(text, (tuple, list)):
        return tuple(int(v) for v in text)
    try:
        sizes = tuple(int(part) for part in text.split(",")) if text.strip() else ()
    except ValueError:
        sizes = (0,)
    if not sizes or any(size < 1 for size in sizes):
        raise DlrmUsageError(f"{option} must be comma-separated positive layer sizes such as 512,256, got {text!r}")
    return sizes


def _resume(options: dict[str, Any], given: set[str], ref: str) -> None:
    from dataclasses import replace

    from dlrm_cli.config import TrainConfig
    from dlrm_cli.errors import DlrmError, DlrmUsageError

    allowed = {"resume", "epochs", "store", "threads", "device", "checkpoint_every", "config"}
    extra = sorted(given - allowed)
    if extra:
        raise DlrmUsageError(
            f"--{extra[0].replace('_', '-')} cannot be changed on --resume; a resumed run keeps its settings "
            "(only --epochs, --threads, --device and --checkpoint-every may be given)"
        )
    checkpoints = CheckpointStore(Path(options["store"]))
    meta = checkpoints.load(ref).meta
    saved = {k: v for k, v in meta["train"].items() if k in TRAIN_FIELDS}
    saved.update({k: tuple(saved[k]) for k in ("bottom_mlp", "top_mlp") if k in saved})
    settings = TrainConfig(**saved)
    changes = {key: options[key] for key in ("epochs", "threads", "device") if key in given}
    settings = replace(settings, **changes)
    done = int(meta.get("epochs_done", len(meta.get("history", []))))
    if settings.epochs <= done:
        if meta.get("complete"):
            raise DlrmError(
                f"checkpoint {ref} already finished its {done} epochs; pass --epochs above {done} to train it further"
            )
        raise DlrmUsageError(f"--epochs {settings.epochs} is not above the {done} epochs already done")
    run(meta["data"], settings, checkpoints, ref, options["checkpoint_every"], options, resume=ref)


def _csv_columns(options: dict[str, Any]) -> dict[str, Any]:
    from dlrm_cli.errors import DlrmUsageError
    from dlrm_cli.parsing import parse_id_list

    columns: dict[str, Any] = {}
    for key in ("user", "item", "rating", "time"):
        if options[key] is not None:
            if not options[key].strip():
                raise DlrmUsageError(f"--{key}-col must not be empty")
            columns[key] = options[key].strip()
    for key in ("dense", "sparse"):
        if options[key] is not None:
            columns[key] = parse_id_list(options[key], f"--{key}-cols")
    if options["rating_range"] is not None:
        parts = options["rating_range"].split(",")
        try:
            low, high = (float(part) for part in parts)
        except ValueError:
            raise DlrmUsageError(f"--rating-range must be LOW,HIGH, got {options['rating_range']!r}") from None
        if not low < high:
            raise DlrmUsageError(f"--rating-range must have LOW below HIGH, got {options['rating_range']!r}")
        columns["rating_range"] = [low, high]
    return columns


def run(
    source: dict[str, Any],
    settings: Any,
    store: Any,
    name: str | None,
    checkpoint_every: int,
    options: dict[str, Any],
    resume: str | None = None,
) -> None:
    import os

    from dlrm_cli import ui
    from dlrm_cli.data import load_dataset
    from dlrm_cli.distributed import Parallel, init, launched_by_torchrun, shutdown
    from dlrm_cli.errors import DlrmError
    from dlrm_cli.train import load_resume

    parallel = init() if launched_by_torchrun() else Parallel()
    console = ui.err()
    console.quiet = not parallel.is_main  # rank 0 speaks for the run
    try:
        if os.environ.get("DLRM_TEST_FAIL_RANK") == str(parallel.rank) and parallel.active:
            raise DlrmError("failure injected by DLRM_TEST_FAIL_RANK")  # for the tests of failing ranks
        with console.status("Loading data…"):
            dataset = load_dataset(source)
        console.print(
            f"Data: {dataset.source['kind']} — {len(dataset.train):,} train, {len(dataset.validation):,} "
            f"validation, {len(dataset.test):,} test ratings; {len(dataset.catalog.users):,} users, "
            f"{len(dataset.catalog.items):,} items" + (f"; {parallel.world} processes" if parallel.active else "")
        )
        resume_from = load_resume(store, resume) if resume else None
        if resume_from is not None:
            console.print(f"Resuming {resume} after epoch {resume_from.last['epoch']}")
        result = _train_ranked(
            dataset, settings, store, name, console, resume_from, checkpoint_every, options, resume, parallel
        )
    except DlrmError as error:
        if parallel.active:
            _report_rank_error(parallel, error)
        shutdown(clean=False)
        raise
    shutdown()
    if not parallel.is_main:
        return
    _summary(result)


def _report_rank_error(parallel: Any, error: Exception) -> None:
    """Name the failing rank; under dlrm's own launcher, leave the message for it to show once."""
    import os

    from dlrm_cli.train import Interrupted

    if not isinstance(error, Interrupted):  # a signal stops every rank alike; a failure belongs to one
        error.args = (f"rank {parallel.rank}: {error}",)
    folder = os.environ.get("DLRM_DIST_ERRORS")
    if folder:
        code = getattr(error, "exit_code", 1)
        Path(folder, f"rank{parallel.rank}").write_text(f"{code}\t{error}")


def _train_ranked(dataset, settings, store, name, console, resume_from, checkpoint_every, options, resume, parallel):
    from dlrm_cli.signals import StopOnSignal
    from dlrm_cli.train import train

    with StopOnSignal() as stop, RichProgress(console, enabled=parallel.is_main) as observer:
        return train(
            dataset,
            settings,
            store=store,
            name=name,
            observer=observer,
            resume=resume_from,
            checkpoint_every=checkpoint_every,
            should_stop=stop.requested,
            options=None if resume else {k: v for k, v in options.items() if k not in ("config", "print_config")},
            parallel=parallel,
            on_plan=(lambda rows: _show_plan(console, rows)) if options.get("print_plan") else None,
        )


def _show_plan(console: Any, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="Sharding plan")
    for column in ("table", "sharding", "ranks"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["table"], row["sharding"], ",".join(map(str, row["ranks"])))
    console.print(table)


def _summary(result: Any) -> None:
    from dlrm_cli import ui

    output = ui.out()
    output.print(ui.history_table(result.history, f"Training summary — {result.name}"))
    curve = ui.sparkline([record["val_rmse"] for record in result.history])
    floor = f", noise floor {result.noise_floor['rmse']:.4f}" if result.noise_floor else ""
    output.print(
        f"Validation RMSE {result.validation['rmse']:.4f} (best epoch {result.best_epoch}) {curve} "
        f"(global-mean baseline {result.baseline['rmse']:.4f}{floor}); trained in {result.seconds:.1f} s"
    )
    output.print(f"Saved checkpoint {result.name}")


class RichProgress:
    """A rich progress bar: epoch, batches, running loss and learning rate; one line per finished epoch."""

    def __init__(self, console: Any, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = console
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("batches · loss {task.fields[loss]:.4f} · lr {task.fields[lr]:.2e}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.enabled = enabled
        self.task: Any = None
        self.loss = 0.0
        self.steps = 0

    def __enter__(self) -> RichProgress:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()

    def epoch_started(self, epoch: int, epochs: int, batches: int, lr: float) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.loss, self.steps = 0.0, 0
        self.task = self.progress.add_task("train", total=batches, epoch=f"{epoch}/{epochs}", loss=0.0, lr=lr)

    def batch_done(self, loss: float) -> None:
        self.steps += 1
        self.loss += (loss - self.loss) / min(self.steps, 100)  # running mean over the last ~100 batches
        if self.steps % 10 == 0 or self.steps == self.progress.tasks[-1].total:
            self.progress.update(self.task, completed=self.steps, loss=self.loss)

    def epoch_done(self, record: dict[str, Any]) -> None:
        self.progress.console.print(
            f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val RMSE {record['val_rmse']:.4f}, "
            f"val MAE {record['val_mae']:.4f}, {record['samples_per_s']:,.0f} samples/s"
        )
