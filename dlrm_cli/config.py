"""The configuration model: frozen dataclasses whose defaults are the single source of every default.

- ``ModelConfig``: everything needed to rebuild a DLRM from its weights.
- ``TrainConfig``: how a model is trained. Its field names are ``dlrm train``'s option names.
- ``DataSource``: where the ratings come from, either the built-in ``SyntheticSpec`` or a ``FileSource``
  (a MovieLens release or a CSV table).
- ``RunConfig``: one training run's record, a ``TrainConfig`` and a ``DataSource``. A checkpoint stores
  it; ``--resume`` and distributed workers read it back.
- ``PRESETS``: settings that apply to a kind of data unless the user chose otherwise.

Nothing here imports torch or numpy: the command line reads these defaults before any heavy import.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_STORE = Path("checkpoints")  # the checkpoint store when neither --store nor $DLRM_CHECKPOINT_DIR is given
STORE_ENV = "DLRM_CHECKPOINT_DIR"


def store_root(store: str | Path | None = None) -> Path:
    """The checkpoint store: ``store`` if given, else $DLRM_CHECKPOINT_DIR if set (and not empty, as the
    command line's ``--store`` reads it), else ./checkpoints."""
    return Path(store) if store is not None else Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


DEFAULT_SPLIT = "random:0.1"
DEFAULT_VALIDATION = 0.05
EMBEDDINGS = ("fused", "plain")
SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")
DEVICES = ("auto", "cpu", "cuda")
EXPORT_FORMATS = ("torchscript", "pt2")
EXPORT_INPUTS = ("ids", "features")  # raw user and item ids, or the model's own dense and sparse inputs
QUANTIZATIONS = ("int8",)
BENCHMARK_PATHS = ("fused", "plain_ebc", "reference", "batched")
BENCHMARK_MODELS = ("default", "movielens", "seed")
BIAS_FEATURES = ("user_id", "item_id")
OBJECTIVES = ("auto", "rating", "both", "ranking")
NEGATIVE_SAMPLING = ("uniform", "popularity")
RELEVANT_RATING = 4.0  # a rating at or above this (or the scale's top, if lower) marks an item the user liked


def relevant_rating(rating_max: float) -> float:
    """The rating that makes a held-out item relevant (``evaluate --k``, training's validation NDCG) and a
    rated pair a liked one (``--positives``): 4, or the scale's top if lower (data without ratings: 1, so
    every interaction)."""
    return min(RELEVANT_RATING, rating_max)


POSITIVES = ("all", "liked")
RETRIEVALS = ("auto", "ease", "svd", "none")  # auto: EASE up to 20,000 items, PureSVD above
LR_SCHEDULES = ("plateau", "step")  # decay when validation stops improving, or every --lr-step epochs
HEADS = ("rating", "ranking")


@dataclass(frozen=True)
class TableConfig:
    """One embedding table: the sparse feature it serves and how many rows it has. A ``bag`` table's feature
    is an implicit-feedback bag, pooled as its sum divided by sqrt(n) (the others pool plain sums)."""

    feature: str
    num_embeddings: int
    bag: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a DLRM from its weights. It has no size defaults of its own: training
    builds it from a ``TrainConfig`` (whose defaults are ``dlrm train``'s), loading from a checkpoint's record.

    The bottom MLP maps ``num_dense`` features to ``embedding_dim``; the top MLP ends in one logit that
    is squashed into ``[rating_min, rating_max]``.
    """

    num_dense: int
    tables: tuple[TableConfig, ...]
    embedding_dim: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    rating_min: float = 0.0
    rating_max: float = 5.0
    dropout: float = 0.0
    biases: bool = False
    # The top MLP's outputs, in order: ``rating`` (squashed onto the rating scale) and ``ranking`` (a logit
    # trained with binary cross-entropy on sampled negatives). The first is what ``forward`` returns.
    heads: tuple[str, ...] = ("rating",)
    # Models trained side by side in one (``--ensemble``): each has its own ``embedding_dim`` columns of every
    # table and its own MLPs; they share the id biases, and the model's logit is the mean of theirs.
    ensemble: int = 1

    def __post_init__(self) -> None:
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {self.ensemble}")
        if not self.heads or len(set(self.heads)) != len(self.heads) or set(self.heads) - set(HEADS):
            raise ValueError(f"heads must be distinct names among {', '.join(HEADS)}, got {list(self.heads)}")
        if self.num_dense < 0:
            raise ValueError(f"num_dense must be >= 0, got {self.num_dense}")
        if not self.tables:
            raise ValueError("a DLRM needs at least one sparse feature")
        for table in self.tables:
            if table.num_embeddings < 1:
                raise ValueError(f"table {table.feature!r} needs at least one row, got {table.num_embeddings}")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if not self.bottom_mlp or self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(
                f"the bottom MLP must end at embedding_dim={self.embedding_dim}, got {list(self.bottom_mlp)}"
            )
        if any(size < 1 for size in (*self.bottom_mlp, *self.top_mlp)):
            raise ValueError(f"MLP sizes must be >= 1, got {list(self.bottom_mlp)} and {list(self.top_mlp)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.rating_min < self.rating_max:
            raise ValueError(f"rating_min must be below rating_max, got {self.rating_min} and {self.rating_max}")

    @property
    def feature_names(self) -> list[str]:
        return [table.feature for table in self.tables]

    @property
    def bias_tables(self) -> tuple[TableConfig, ...]:
        """The id tables that also get a one-dimensional bias table (when ``biases``)."""
        return tuple(table for table in self.tables if table.feature in BIAS_FEATURES) if self.biases else ()

    @property
    def interaction_width(self) -> int:
        """Width of the top MLP's input: the dense embedding and one dot product per pair of the F + 1 vectors."""
        vectors = len(self.tables) + 1
        return self.embedding_dim + vectors * (vectors - 1) // 2

    @property
    def table_parameters(self) -> int:
        return sum(table.num_embeddings for table in self.tables) * self.embedding_dim * self.ensemble

    @property
    def mlp_parameters(self) -> int:
        """Weights and biases of the bottom MLP (num_dense -> bottom_mlp) and the top one (-> top_mlp -> 1)."""
        total = 0
        for width, sizes in ((self.num_dense, self.bottom_mlp), (self.interaction_width, (*self.top_mlp, 1))):
            for size in sizes:
                total += (width + 1) * size
                width = size
        return total * self.ensemble

    def refuse_oversized(self, copies: int, hint: str) -> None:
        """Raise ``ValueError`` before anything is allocated when ``copies`` float32 copies of the model
        (weights, gradients, optimizer state) would take more than half of this machine's memory."""
        need = (self.table_parameters + self.mlp_parameters) * 4 * copies
        if need > memory_bytes() // 2:
            raise ValueError(
                f"a model of {self.table_parameters:,} embedding and {self.mlp_parameters:,} MLP parameters would "
                f"need about {need / 2**30:.1f} GiB, more than half of this machine's memory; {hint}"
            )

    def to_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        if self.ensemble == 1:  # a single model's record reads as it always has
            del fields["ensemble"]
        return fields

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        raw = dict(raw)
        raw["tables"] = tuple(TableConfig(**table) for table in raw["tables"])
        raw["bottom_mlp"] = tuple(raw["bottom_mlp"])
        raw["top_mlp"] = tuple(raw["top_mlp"])
        if "heads" in raw:
            raw["heads"] = tuple(raw["heads"])
        return cls(**raw)


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. The defaults are ``dlrm train``'s; each field is the option of that name."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    lr_schedule: str = "plateau"
    lr_step: int = 1
    lr_gamma: float = 0.6
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    embedding_dim: int = 32
    embeddings: str = "fused"
    sparse_optimizer: str = "adagrad"
    sparse_lr: float = 0.05
    embedding_l2: float = 3e-3
    threads: int | None = None
    patience: int | None = 2
    dropout: float = 0.0
    bags: bool = True
    bag_cap: int | None = None  # a bag of more members keeps a uniform random bag_cap of them (None: all)
    heavy_bags: int | None = None  # bags of more members are pooled from a cache (None: every bag exactly)
    bag_refresh: int = 10  # the cache's gradient is applied, and the cache recomputed, every this many batches
    biases: bool = True
    objective: str = "auto"
    negatives: int = 4
    negative_sampling: str = "uniform"
    positives: str = "all"
    ranking_weight: float = 1.0
    bottom_mlp: tuple[int, ...] = (64,)
    top_mlp: tuple[int, ...] = (64, 32)
    checkpoint_every: int = 1
    retrieval: str = "auto"  # the candidate generator of a two-stage model (``none``: one stage)
    retrieve: int = 100  # candidates the retrieval stage proposes per user, for the ranker to order
    ensemble: int = 1  # models trained side by side, each on its own loss, predicting their mean

    def __post_init__(self) -> None:
        names = ("epochs", "batch_size", "lr_step", "embedding_dim", "checkpoint_every", "negatives", "retrieve")
        for name in (*names, "ensemble"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, value, allowed in (
            ("embeddings", self.embeddings, EMBEDDINGS),
            ("sparse_optimizer", self.sparse_optimizer, SPARSE_OPTIMIZERS),
            ("device", self.device, DEVICES),
            ("objective", self.objective, OBJECTIVES),
            ("negative_sampling", self.negative_sampling, NEGATIVE_SAMPLING),
            ("positives", self.positives, POSITIVES),
            ("retrieval", self.retrieval, RETRIEVALS),
            ("lr_schedule", self.lr_schedule, LR_SCHEDULES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        self._check_bags()
        if not self.ranking_weight > 0:
            raise ValueError(f"ranking_weight must be > 0, got {self.ranking_weight}")
        if self.embeddings == "fused":
            self._check_fused_widths()

    def _check_bags(self) -> None:
        if self.bag_cap is not None and self.bag_cap < 1:
            raise ValueError(f"bag_cap must be >= 1, got {self.bag_cap}")
        if self.bag_cap is not None and not self.bags:
            raise ValueError("bag_cap caps the implicit-feedback bags, and this run has none: add --bags")
        if self.bag_refresh < 1:
            raise ValueError(f"bag_refresh must be >= 1, got {self.bag_refresh}")
        if self.heavy_bags is None:
            return
        if self.heavy_bags < 0:
            raise ValueError(f"heavy_bags must be >= 0, got {self.heavy_bags}")
        if not self.bags:
            raise ValueError("heavy_bags applies to the implicit-feedback bags, and this run has none: add --bags")
        if self.embeddings != "fused":
            raise ValueError("heavy_bags applies its gradients through the fused tables: use embeddings fused")

    def _check_fused_widths(self) -> None:
        """FBGEMM's kernels take rows of a multiple of 4 floats: the tables (``embedding_dim`` for each model of
        the ensemble) and, where a ranker may be trained, the ranker's (one model's ``embedding_dim``)."""
        width = self.embedding_dim * self.ensemble
        if width % 4:
            shown = f"{width}" if self.ensemble == 1 else f"{self.embedding_dim} x ensemble {self.ensemble} = {width}"
            raise ValueError(
                f"fused embeddings need rows of a multiple of 4 floats, and embedding_dim gives {shown}; "
                "choose another embedding_dim or embeddings plain"
            )
        if self.embedding_dim % 4 and self.retrieval != "none":
            raise ValueError(
                f"the ranking stage is one model with fused rows of embedding_dim {self.embedding_dim} floats, "
                "which must be a multiple of 4; choose another embedding_dim or retrieval none"
            )

    def objective_for(self, implicit: bool) -> str:
        """The objective on data with ratings or (``implicit``) without: ``auto`` is ``rating`` where there
        are ratings and ``ranking`` where there are none. Raises ``ValueError`` for a rating objective on
        data without ratings."""
        if self.objective == "auto":
            return "ranking" if implicit else "rating"
        if implicit and self.objective != "ranking":
            raise ValueError(
                f"--objective {self.objective} needs ratings, and this data has none (no rating column): "
                "train it with --objective ranking (the default for such data)"
            )
        return self.objective

    def heads_for(self, implicit: bool) -> tuple[str, ...]:
        """The model's outputs (``ModelConfig.heads``) for this objective on data with or without ratings."""
        objective = self.objective_for(implicit)
        return {"rating": ("rating",), "both": ("rating", "ranking"), "ranking": ("ranking",)}[objective]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        raw = dict(raw)
        raw.setdefault("lr_schedule", "step")  # records from before the choice decayed every ``lr_step`` epochs
        for key in ("bottom_mlp", "top_mlp"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**raw)


def memory_bytes() -> int:
    """Physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class SyntheticSpec:
    """The built-in data: sizes and seed. The defaults train in under a minute on 2 CPU cores."""

    users: int = 2000
    items: int = 1000
    categories: int = 20
    ratings: int = 200_000
    noise: float = 0.5
    factors: int = 8
    seed: int = 0
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    context: bool = True  # each rating's channel and hour (a record from before them: False)

    kind = "synthetic"

    def __post_init__(self) -> None:
        for name in ("users", "items", "categories", "ratings", "factors"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic {name} must be >= 1, got {getattr(self, name)}")
        if self.noise < 0:
            raise ValueError(f"synthetic noise must be >= 0, got {self.noise}")
        if self.ratings < 10:
            raise ValueError(f"synthetic ratings must be >= 10 to make three splits, got {self.ratings}")
        need = 96 * self.ratings + (8 * self.factors + 128) * (self.users + self.items)
        if need > memory_bytes() // 2:
            raise ValueError(
                f"synthetic data of {self.users:,} users, {self.items:,} items and {self.ratings:,} ratings "
                f"needs about {need / 2**30:.1f} GiB, more than half of this machine's memory"
            )

    @property
    def label(self) -> str:
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class CsvColumns:
    """Which CSV columns hold what. ``None`` (or empty) means the default: columns user, item, rating."""

    user: str | None = None
    item: str | None = None
    rating: str | None = None
    time: str | None = None
    dense: tuple[str, ...] = ()
    sparse: tuple[str, ...] = ()
    rating_range: tuple[float, float] | None = None
    title: str | None = None  # each item's display name

    @property
    def user_column(self) -> str:
        return self.user or "user"

    @property
    def item_column(self) -> str:
        return self.item or "item"

    @property
    def rating_column(self) -> str:
        return self.rating or "rating"

    def to_dict(self) -> dict[str, Any]:
        """Only what was chosen: the checkpoint's record and the parse cache's key depend on this form."""
        chosen = {key: value for key, value in asdict(self).items() if value not in (None, ())}
        return {key: list(value) if isinstance(value, tuple) else value for key, value in chosen.items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CsvColumns:
        raw = dict(raw)
        for key in ("dense", "sparse", "rating_range"):
            if raw.get(key) is not None:
                raw[key] = tuple(raw[key])
        return cls(**raw)


@dataclass(frozen=True)
class FileSource:
    """Ratings read from files: a MovieLens release (``movielens``) or a CSV table (``csv``).

    ``split`` is as typed (``random:0.1``, ``temporal:0.1``, ``files:TRAIN,TEST``) with ``files`` the two
    resolved paths of a files split; ``validation`` is the share of training rows held out;
    ``fingerprint`` identifies the files' contents once they have been read for training.
    """

    kind: str
    path: str
    split: str = DEFAULT_SPLIT
    seed: int = 0
    validation: float = DEFAULT_VALIDATION
    files: tuple[str, ...] = ()
    columns: CsvColumns | None = None
    fingerprint: str | None = None
    time_features: tuple[str, ...] = ()  # context columns derived from each rating's timestamp

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.path}"

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "kind": self.kind,
            "path": self.path,
            "split": self.split,
            "seed": self.seed,
            "validation": self.validation,
        }
        if self.files:
            record["files"] = list(self.files)
        if self.kind == "csv":
            record["columns"] = (self.columns or CsvColumns()).to_dict()
        if self.fingerprint is not None:
            record["fingerprint"] = self.fingerprint
        if self.time_features:  # absent when none, as in every record written before they existed
            record["time_features"] = list(self.time_features)
        return record


DataSource = SyntheticSpec | FileSource


def source_from_dict(raw: dict[str, Any]) -> DataSource:
    """A data source from its record in a checkpoint (formats 1 and 2 write the same record)."""
    raw = dict(raw)
    kind = raw.pop("kind")
    if kind == "synthetic":
        return SyntheticSpec(**{"context": False, **raw})  # a record without the field: data without context
    if kind not in ("movielens", "csv"):
        raise ValueError(f"unknown data kind {kind!r}")
    columns = raw.pop("columns", None)
    return FileSource(
        kind=kind,
        files=tuple(raw.pop("files", ())),
        columns=CsvColumns.from_dict(columns) if columns is not None else None,
        time_features=tuple(raw.pop("time_features", ())),
        **raw,
    )


@dataclass(frozen=True)
class RunConfig:
    """One training run's record: how it trains and on what. A checkpoint stores exactly this."""

    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataSource = field(default_factory=SyntheticSpec)

    def to_dict(self) -> dict[str, Any]:
        return {"train": self.train.to_dict(), "data": self.data.to_dict()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        return cls(train=TrainConfig.from_dict(raw["train"]), data=source_from_dict(raw["data"]))


TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))

# The defaults above are the recipe for rating data (MovieLens releases and CSV files alike), chosen on
# validation rows of the MovieLens 1M subset (never its test rows); see docs/accuracy.md. The learning rate
# decays only when an epoch does not improve validation (``plateau``): a fixed decay every epoch fits one
# size of data (it had decayed 100-fold by epoch 10, while 10,000-row data sets were still improving);
# see docs/first-hour.md.
# The built-in synthetic data differs in kind: who rates what is drawn independently of the ratings, so
# the bags carry no signal there (they cost 8x in speed and 0.01 RMSE, measured), and its dense ratings
# take stronger regularisation. These settings apply to --data synthetic unless the command line or
# --config says otherwise.
# The ranking objective (a ranking-only model) learns from many more pairs than the rating one (each
# rated pair and its sampled negatives) and overfits later: it trains at a higher rate that decays more
# slowly, without the L2 penalty on the embeddings, with 8 negatives per rated pair, and with only the
# pairs a user liked as positives (where there are ratings; see ``Objective``). Chosen on validation
# NDCG@10 of the MovieLens 1M subset; see docs/ranking.md. They apply unless
# the command line or --config says otherwise (and after the data kind's preset).
OBJECTIVE_PRESETS: dict[str, dict[str, object]] = {
    "ranking": {
        "lr": 3e-3,
        "lr_schedule": "step",  # validation NDCG@10 0.1692 against 0.1682 on a plateau (docs/first-hour.md)
        "lr_gamma": 0.8,
        "sparse_lr": 0.1,
        "embedding_l2": 0.0,
        "negatives": 8,
        "positives": "liked",
    },
}

PRESETS: dict[str, dict[str, object]] = {
    "synthetic": {
        "retrieval": "none",  # who rates what is drawn at random there: there is nothing to retrieve
        "bags": False,
        "sparse_optimizer": "rowwise_adagrad",
        "sparse_lr": 0.1,
        "embedding_l2": 1e-2,
        # three models of 8 columns each, averaged: validation RMSE 0.5391 against one of 32 columns' 0.5575
        # (docs/accuracy.md); the variance of one model trained on 80 ratings a user is most of its error
        "embedding_dim": 8,
        "ensemble": 3,
    },
}


@dataclass(frozen=True)
class ExportSpec:
    """What ``dlrm export`` was asked for: the file format, which inputs the artifact takes, int8 tables, and
    which of the model's heads it serves (None: the model's first). Raises ``ValueError`` for a choice that
    is not offered or a combination that cannot be written."""

    format: str | None = None  # None: torchscript for int8 tables, else pt2
    inputs: str = "ids"
    quantize: str | None = None
    head: str | None = None

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in EXPORT_FORMATS:
            raise ValueError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {self.format!r}")
        if self.inputs not in EXPORT_INPUTS:
            raise ValueError(f"--inputs must be one of {', '.join(EXPORT_INPUTS)}, got {self.inputs!r}")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise ValueError(f"--quantize takes {', '.join(QUANTIZATIONS)}, got {self.quantize!r}")
        if self.quantize and self.format == "pt2":
            raise ValueError("--quantize int8 exports TorchScript; leave out --format pt2")
        if self.head is not None and self.head not in HEADS:
            raise ValueError(f"--head must be {' or '.join(HEADS)}, got {self.head!r}")
        if self.format is None:  # int8 tables are written as TorchScript, everything else as torch.export's pt2
            object.__setattr__(self, "format", "torchscript" if self.quantize else "pt2")


@dataclass(frozen=True)
class ServeSettings:
    """How ``dlrm serve`` listens and answers. The defaults are the command's."""

    store: Path = DEFAULT_STORE
    checkpoint: str = "latest"
    host: str = "127.0.0.1"
    port: int = 8000
    max_items: int = 1000  # most items one /predict request may rate
    max_top: int = 1000  # largest top one /recommend request may ask for
    max_body: int = 1 << 20  # bytes
    max_pairs: int = 65536  # most user-item pairs scored in one forward pass (micro-batching)
    max_wait: float = 0.002  # seconds a request waits for others to share its batch
    watch: float | None = None  # seconds between looks at the store for a newer checkpoint; None: no watching
    watch_interval: float = 2.0  # what --watch uses when --watch-interval is not given
    threads: int | None = None  # CPU threads for scoring; None: OMP_NUM_THREADS, else the CPUs it may use
    access_log: bool = False  # log every request on stderr


@dataclass(frozen=True)
class BenchmarkSettings:
    """What ``dlrm benchmark`` measures, and for how long. The defaults are the command's."""

    rows: int = 100_000  # users and items of the default model's data
    batch_size: int = 256
    repeats: int = 5
    min_seconds: float = 1.0
    eval_ratings: int = 1_000_000
    latency_calls: int = 200
    mlp_batch: int = 2048
    paths: tuple[str, ...] = BENCHMARK_PATHS
    threads: int | None = None
    models: tuple[str, ...] = BENCHMARK_MODELS
    concurrent: int = 2  # training processes run at once for the concurrency figure; 0 skips it

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "paths": list(self.paths), "models": list(self.models)}
