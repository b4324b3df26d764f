"""Command-line options, declared once, and how ``dlrm train``'s become a ``TrainRequest``.

Defaults come from the configuration dataclasses (``dlrm_cli.config``), never from literals here. For
``dlrm train`` the layers are, lowest first: those defaults, the preset of the data's kind, a ``--config``
TOML file, the command line. ``to_toml`` writes a run's record back as a file that ``--config`` reads.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import tomllib
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from dlrm_cli.cli.parsing import parse_id_list, parse_rating_range, parse_sizes
from dlrm_cli.config import (
    DEVICES,
    EMBEDDINGS,
    LR_SCHEDULES,
    NEGATIVE_SAMPLING,
    OBJECTIVES,
    POSITIVES,
    RETRIEVALS,
    SPARSE_OPTIMIZERS,
    STORE_ENV,
    CsvColumns,
    FileSource,
    RunConfig,
    SyntheticSpec,
    TrainConfig,
)
from dlrm_cli.errors import DlrmUsageError
from dlrm_cli.training.request import SYNTHETIC_SIZES, TrainRequest, request_from_options

TRAIN = TrainConfig()
SYNTHETIC = SyntheticSpec()
DATA_DEFAULT = RunConfig().data.label
NOT_IN_TOML = ("config", "print_config", "resume")
SYNTH, DIST, OPT, DATA, CSV = "Synthetic data", "Distributed", "Optimization", "Data", "CSV columns"


def _choices(name: str, values: tuple[str, ...]) -> type[StrEnum]:
    """An option's choices as the enum Typer shows and checks, built from ``dlrm_cli.config``'s list."""
    return StrEnum(name, {value: value for value in values})  # type: ignore[return-value]


Embeddings = _choices("Embeddings", EMBEDDINGS)
SparseOptimizer = _choices("SparseOptimizer", SPARSE_OPTIMIZERS)
ObjectiveChoice = _choices("ObjectiveChoice", OBJECTIVES)
NegativeSampling = _choices("NegativeSampling", NEGATIVE_SAMPLING)
Positives = _choices("Positives", POSITIVES)
Device = _choices("Device", DEVICES)
Retrieval = _choices("Retrieval", RETRIEVALS)
LrScheduleChoice = _choices("LrScheduleChoice", LR_SCHEDULES)


def positive(value: float | None) -> float | None:
    """Typer callback: the value must be a finite number above zero."""
    if value is not None and not (0 < value < float("inf")):
        raise typer.BadParameter(f"{value} is not a positive number")
    return value


def _option(help: str, panel: str | None = None, **limits: Any) -> Any:
    return typer.Option(help=help, rich_help_panel=panel, **limits)


# Shared by several commands ------------------------------------------------------------------------
StoreOption = Annotated[
    Path, typer.Option("--store", envvar=STORE_ENV, help="Checkpoint store folder.", show_envvar=True)
]
CheckpointOption = Annotated[
    str, typer.Option("--checkpoint", "-c", help="Checkpoint name, or 'latest' for the newest.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")]
DeviceOption = Annotated[Device, typer.Option("--device", help="Where to run: CUDA when available, or as chosen.")]
UserOption = Annotated[str, typer.Option(help="The user's id, as in the training data.")]
ForceOutputOption = Annotated[
    bool, typer.Option("--force", help="Replace --output if it exists (atomically; never a link or special file).")
]
ThreadsOption = Annotated[
    int | None, _option("CPU threads for torch (default: training picks a count by measurement).", min=1)
]

# dlrm train ----------------------------------------------------------------------------------------
Epochs = Annotated[int, _option("Passes over the training rows.", min=1)]
BatchSize = Annotated[int, _option("Ratings per optimizer step.", min=1)]
Lr = Annotated[float, _option("Adam learning rate.", callback=positive)]
LrScheduleOption = Annotated[
    LrScheduleChoice,
    _option("plateau: decay when an epoch does not improve validation; step: decay every --lr-step epochs."),
]
LrStep = Annotated[int, _option("Epochs between learning-rate decays (--lr-schedule step).", min=1)]
LrGamma = Annotated[float, _option("Learning-rate decay factor (at each decay).", max=1.0, callback=positive)]
WeightDecay = Annotated[float, _option("L2 penalty on all weights.", min=0.0)]
EmbeddingDim = Annotated[
    int,
    _option("Size of every embedding (and the bottom MLP's output); each model of an --ensemble has its own.", min=1),
]
EmbeddingsOption = Annotated[
    Embeddings, _option("fused: FBGEMM kernels update only the rows used; plain: Adam on all.", OPT)
]
SparseOptimizerOption = Annotated[SparseOptimizer, _option("Fused optimizer for the embedding tables.", OPT)]
SparseLr = Annotated[float, _option("Learning rate of the fused table optimizer.", OPT, callback=positive)]
EmbeddingL2 = Annotated[
    float, _option("L2 penalty on the embeddings each batch looks up (regularisation).", OPT, min=0.0)
]
Seed = Annotated[int, _option("Seed for weights, data order and synthetic data.", min=0, max=2**32 - 1)]
Name = Annotated[str | None, _option("Checkpoint name (default: DATA-DATE-TIME).")]
Data = Annotated[str, _option("Ratings: synthetic, movielens:DIR or csv:FILE.", DATA)]
Split = Annotated[str | None, _option("Test rows: random:0.1, temporal:0.1 or files:TRAIN,TEST.", DATA)]
SplitSeed = Annotated[
    int | None,
    _option(
        "Seed of a random split and of the validation rows; of the built-in data itself (default: --seed).",
        DATA,
        min=0,
    ),
]
TimeFeatures = Annotated[
    str | None, _option("Context from each rating's timestamp: year,user_days,item_days,weekday,hour,user_day.", DATA)
]
ValFraction = Annotated[float, _option("Training rows held out for validation.", DATA, min=0.0, max=0.5)]
UserCol = Annotated[str | None, _option("CSV: user id column.", CSV)]
ItemCol = Annotated[str | None, _option("CSV: item id column.", CSV)]
RatingCol = Annotated[str | None, _option("CSV: rating column.", CSV)]
DenseCols = Annotated[str | None, _option("CSV: numeric side columns, a,b.", CSV)]
SparseCols = Annotated[str | None, _option("CSV: categorical side columns, a,b (values may be x|y).", CSV)]
TimeCol = Annotated[str | None, _option("CSV: timestamp column.", CSV)]
TitleCol = Annotated[str | None, _option("CSV: item display name column, shown by predict, recommend and serve.", CSV)]
RatingRange = Annotated[str | None, _option("CSV: declared rating scale LOW,HIGH (default: the data's).", CSV)]
Users = Annotated[int, _option("Synthetic users.", SYNTH, min=1)]
Items = Annotated[int, _option("Synthetic items.", SYNTH, min=1)]
Ratings = Annotated[int, _option("Synthetic ratings.", SYNTH, min=10)]
Noise = Annotated[float, _option("Synthetic rating noise (std).", SYNTH, min=0.0)]
BottomMlp = Annotated[str, _option("Bottom MLP hidden sizes; it then ends at --embedding-dim.", OPT)]
TopMlp = Annotated[str, _option("Top MLP hidden sizes, before the output.", OPT)]
Dropout = Annotated[float, _option("Dropout on the top MLP's input.", OPT, min=0.0, max=0.95)]
Ensemble = Annotated[
    int,
    _option("Train N models side by side in one checkpoint and predict their mean (N x the time).", OPT, min=1, max=16),
]
Biases = Annotated[bool, _option("Add a learned bias for each user and each item to the rating's logit.", OPT)]
Bags = Annotated[
    bool, _option("Add each user's rated items and each item's raters (training rows) as sparse features.", OPT)
]
BagCap = Annotated[
    int | None,
    _option(
        "Bags of more members keep a uniform random N of them: an epoch's cost stops growing with the largest "
        "bags (default: every member).",
        OPT,
        min=1,
    ),
]
HeavyBags = Annotated[
    int | None,
    _option(
        "Bags of more members (popular items, prolific users) are read from a cache of their pooled sums, "
        "their exact gradient applied every --bag-refresh batches: a sample's cost stops growing with the "
        "largest bags (default: every bag pooled at every sample).",
        OPT,
        min=0,
    ),
]
BagRefresh = Annotated[
    int,
    _option(
        "With --heavy-bags: batches between two updates of the cached bags (their gradient, their sums).", OPT, min=1
    ),
]
ObjectiveOption = Annotated[
    ObjectiveChoice,
    _option(
        "rating: squared error; ranking: which items a user picks (BCE on sampled negatives); both; "
        "auto: ranking for data without ratings, else rating.",
        OPT,
    ),
]
Negatives = Annotated[int, _option("Ranking: sampled unrated items per rated pair.", OPT, min=1)]
NegativeSamplingOption = Annotated[
    NegativeSampling, _option("Ranking: draw negatives uniformly or by training popularity.", OPT)
]
PositivesOption = Annotated[
    Positives,
    _option(
        "Ranking, on data with ratings: all rated pairs are positives, or only those liked (rated 4 or more, "
        "or the scale's top if lower).",
        OPT,
    ),
]
RankingWeight = Annotated[
    float, _option("With --objective both: the ranking loss's weight beside the rating's.", OPT, callback=positive)
]


RetrievalOption = Annotated[
    Retrieval,
    _option(
        "Two stages: a candidate generator (ease, or svd for large catalogues; auto picks by size) proposes "
        "items and a DLRM ranker orders them; none: the main model ranks the whole catalogue.",
        OPT,
    ),
]
RetrieveOption = Annotated[
    int, _option("Two stages: the items the retrieval stage proposes per user, for the ranker to order.", OPT, min=1)
]
RetrieveQueryOption = Annotated[
    int | None,
    typer.Option(
        "--retrieve",
        min=1,
        help="A two-stage checkpoint: items the retrieval stage proposes per user (default: as trained).",
    ),
]
ContextQueryOption = Annotated[
    str | None,
    typer.Option(
        "--context",
        help="A model with context columns: the moment asked about, as COLUMN=VALUE pairs (channel=app,hour=20); "
        "a column not given takes its default (the training mean, or the most frequent training value).",
    ),
]


Patience = Annotated[
    int | None,
    _option("Stop after this many epochs without a better validation RMSE (NDCG@10 for --objective ranking).", min=1),
]
CheckpointEvery = Annotated[int, _option("Save the run's checkpoint every N epochs.", min=1)]
NprocPerNode = Annotated[int, _option("Train on N local processes, launched through torchrun.", DIST, min=1)]
PrintPlan = Annotated[bool, _option("Show how the embedding tables are sharded over the ranks.", DIST)]
Resume = Annotated[str | None, _option("Continue checkpoint NAME from its last completed epoch (see --epochs).")]
ConfigFile = Annotated[Path | None, _option("Read training options from a TOML file; command-line options win.")]
PrintConfig = Annotated[bool, _option("Print the effective options as TOML and exit.")]


def comma_joined(values: tuple[object, ...]) -> str:
    """(512, 256) -> '512,256': a tuple as the command line writes it."""
    return ",".join(str(value) for value in values)


# From options to a request ---------------------------------------------------------------------------
def train_request(ctx: typer.Context) -> TrainRequest:
    """The request that ``dlrm train``'s options, its ``--config`` file and the data's preset describe."""
    values = {name: _plain(value) for name, value in ctx.params.items()}
    given = given_on_command_line(ctx)
    chosen = set(given)
    if values["config"] is not None:
        chosen |= _apply_toml(ctx, Path(values["config"]), values, given)
    parse_lists(values)
    return request_from_options(
        values,
        chosen,
        given,
        store=Path(values["store"]),
        name=values["name"],
        resume=values["resume"],
        processes=int(values["nproc_per_node"]),
        show_plan=bool(values["print_plan"]),
    )


def parse_lists(values: dict[str, Any]) -> None:
    """Layer sizes, column lists and the rating range as typed (``512,256``) -> the tuples a request takes."""
    for key in ("bottom_mlp", "top_mlp"):
        values[key] = parse_sizes(values[key], f"--{key.replace('_', '-')}")
    for key in ("dense_cols", "sparse_cols", "time_features"):
        if values[key] is not None:
            values[key] = tuple(parse_id_list(values[key], f"--{key.replace('_', '-')}"))
    if values["rating_range"] is not None:
        values["rating_range"] = parse_rating_range(values["rating_range"])


def given_on_command_line(ctx: typer.Context) -> set[str]:
    """Options the user typed (or set through an environment variable), as opposed to defaults."""
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            given.add(name)
    return given


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def _apply_toml(ctx: typer.Context, config: Path, values: dict[str, Any], given: set[str]) -> set[str]:
    """Apply the TOML file's settings that the command line does not override; returns the keys it set."""
    try:
        table = tomllib.loads(config.read_text())
    except FileNotFoundError:
        raise DlrmUsageError(f"--config file {config} does not exist") from None
    except IsADirectoryError:
        raise DlrmUsageError(f"--config {config} is a folder, not a TOML file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DlrmUsageError(f"cannot read --config file {config}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise DlrmUsageError(f"--config file {config} is not valid TOML: {error}") from None
    params = {param.name: param for param in ctx.command.params}
    chosen = set()
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        if key not in params or key in NOT_IN_TOML:
            raise DlrmUsageError(f"{config}: unknown setting {raw_key!r}")
        if key in given:
            continue  # the command line wins
        try:  # the option's own conversion, range checks and callback, as on the command line
            values[key] = _plain(params[key].process_value(ctx, value))
        except typer.BadParameter as error:
            raise DlrmUsageError(f"{config}: {raw_key}: {error.message}") from None
        chosen.add(key)
    return chosen


# From a request back to options --------------------------------------------------------------------
def to_toml(config: RunConfig) -> str:
    """A run's record as a TOML document that ``--config`` reads back (unset options left out)."""
    lines = ["# dlrm train settings (dlrm train --config FILE); unset options are left out"]
    for key, value in _option_values(config).items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value))
        lines.append(f"{key.replace('_', '-')} = {text}")
    return "\n".join(lines) + "\n"


def settings_rows(config: RunConfig) -> list[tuple[str, str]]:
    """A run's record as ``dlrm train``'s options and their values as typed, for display; unset ones left out."""
    return [(key, str(value)) for key, value in _option_values(config).items() if value is not None]


def _option_values(config: RunConfig) -> dict[str, Any]:
    values: dict[str, Any] = config.train.to_dict()
    values.update(bottom_mlp=comma_joined(config.train.bottom_mlp), top_mlp=comma_joined(config.train.top_mlp))
    data = config.data
    values["data"] = data.label
    if isinstance(data, FileSource):
        values.update(split=data.split, val_fraction=data.validation)
        values["time_features"] = comma_joined(data.time_features) or None
        if data.seed != config.train.seed:
            values["split_seed"] = data.seed
        columns = data.columns or CsvColumns()
        values.update(user_col=columns.user, item_col=columns.item, rating_col=columns.rating)
        values.update(time_col=columns.time, title_col=columns.title)
        values.update({f"{key}_cols": comma_joined(getattr(columns, key)) or None for key in ("dense", "sparse")})
        if columns.rating_range is not None:
            values["rating_range"] = comma_joined(columns.rating_range)
    else:
        values.update({key: getattr(data, key) for key in SYNTHETIC_SIZES})
        if data.seed != config.train.seed:
            values["split_seed"] = data.seed
    return values
