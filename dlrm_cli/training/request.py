"""What one ``dlrm train`` was asked to do, checked against the checkpoint store before any work.

A ``TrainRequest`` is built once, from option values (``request_from_options``: the command line and the
Python API's ``train`` both call it; tests may build one directly), and travels as is:
into ``dlrm_cli.training.run`` in this process, or as JSON to the workers of a distributed run. Nothing here
imports torch, so a request that cannot work is refused at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dlrm_cli.config import (
    DEFAULT_VALIDATION,
    OBJECTIVE_PRESETS,
    PRESETS,
    TRAIN_FIELDS,
    CsvColumns,
    DataSource,
    RunConfig,
    SyntheticSpec,
    TrainConfig,
)
from dlrm_cli.errors import DlrmError, DlrmUsageError
from dlrm_cli.store.checkpoints import CheckpointStore, validate_name

# What a resumed run may change: how long it trains, and where. Everything else is the checkpoint's.
RESUMABLE = frozenset({"epochs", "threads", "device", "checkpoint_every"})
NOT_SETTINGS = frozenset({"resume", "store", "config", "nproc_per_node", "print_plan"})


@dataclass(frozen=True)
class TrainRequest:
    """One training run to do.

    ``name`` is the checkpoint to create (``None``: a fresh DATA-DATE-TIME name); ``resume`` a checkpoint
    to continue instead. ``given`` names the options the user set on the command line: a resumed run
    takes the ones in ``RESUMABLE`` from ``config`` and everything else from its checkpoint.
    """

    config: RunConfig
    store: Path
    name: str | None = None
    resume: str | None = None
    processes: int = 1
    show_plan: bool = False
    given: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "store": str(self.store),
            "name": self.name,
            "resume": self.resume,
            "processes": self.processes,
            "show_plan": self.show_plan,
            "given": sorted(self.given),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainRequest:
        return cls(
            config=RunConfig.from_dict(raw["config"]),
            store=Path(raw["store"]),
            name=raw["name"],
            resume=raw["resume"],
            processes=int(raw["processes"]),
            show_plan=bool(raw["show_plan"]),
            given=frozenset(raw["given"]),
        )


def prepare(request: TrainRequest) -> TrainRequest:
    """Refuse what cannot work before anything is loaded; a resumed run gets its checkpoint's record.

    Raises ``DlrmUsageError`` for a name in use or invalid, a setting a resumed run cannot change, or a
    store that cannot be written; ``DlrmError`` for a resumed run that has already finished."""
    store = CheckpointStore(request.store)
    if request.resume is not None:
        request = _resumed(store, request)
    elif request.name is not None:
        check_new_name(store, request.name)
    store.ensure_writable()
    return request


def check_new_name(store: CheckpointStore, name: str) -> None:
    """Refuse (``DlrmUsageError``) a name that is invalid or already in ``store``."""
    validate_name(name)
    if store.exists(name):
        raise DlrmUsageError(f"checkpoint {name} already exists in {store.root}; choose another --name")


def _resumed(store: CheckpointStore, request: TrainRequest) -> TrainRequest:
    extra = sorted(request.given - RESUMABLE - NOT_SETTINGS)
    if extra:
        raise DlrmUsageError(
            f"--{extra[0].replace('_', '-')} cannot be changed on --resume; a resumed run keeps its settings "
            "(only --epochs, --threads, --device and --checkpoint-every may be given)"
        )
    checkpoint = store.load(request.resume or "")
    saved = RunConfig.from_dict(checkpoint.meta["run"])
    changes = {key: getattr(request.config.train, key) for key in request.given & RESUMABLE}
    config = replace(saved, train=replace(saved.train, **changes))
    done = int(checkpoint.meta.get("epochs_done", len(checkpoint.meta.get("history", []))))
    if config.train.epochs <= done:
        if checkpoint.meta.get("complete"):
            raise DlrmError(
                f"checkpoint {checkpoint.name} already finished its {done} epochs; "
                f"pass --epochs above {done} to train it further"
            )
        raise DlrmUsageError(f"--epochs {config.train.epochs} is not above the {done} epochs already done")
    return replace(request, config=config, resume=checkpoint.name, name=None)


# From option values to a request ---------------------------------------------------------------------
SYNTHETIC_SIZES = ("users", "items", "ratings", "noise")
CSV_OPTIONS = (
    "user_col",
    "item_col",
    "rating_col",
    "time_col",
    "title_col",
    "dense_cols",
    "sparse_cols",
    "rating_range",
)
# Range checks the command line makes through its option declarations, for the Python API, which has none:
# (low, high, whether low itself is allowed). TrainConfig and SyntheticSpec check the rest.
LIMITS: dict[str, tuple[float, float | None, bool]] = {
    "lr": (0.0, None, False),
    "lr_gamma": (0.0, 1.0, False),
    "sparse_lr": (0.0, None, False),
    "weight_decay": (0.0, None, True),
    "embedding_l2": (0.0, None, True),
    "dropout": (0.0, 0.95, True),
    "threads": (1, None, True),
    "patience": (1, None, True),
    "seed": (0, 2**32 - 1, True),
    "split_seed": (0, None, True),
    "val_fraction": (0.0, 0.5, True),
    "ensemble": (1, 16, True),
}


def option_defaults() -> dict[str, Any]:
    """Every option of ``dlrm train`` that shapes a run, at its default (sizes and column lists as tuples)."""
    synthetic = SyntheticSpec()
    return {
        **TrainConfig().to_dict(),
        **{key: getattr(synthetic, key) for key in SYNTHETIC_SIZES},
        **dict.fromkeys(CSV_OPTIONS),
        "data": RunConfig().data.label,
        "split": None,
        "split_seed": None,
        "time_features": None,
        "val_fraction": DEFAULT_VALIDATION,
    }


def check_limits(values: dict[str, Any]) -> None:
    """Refuse a value outside its option's range (``LIMITS``), as the command line's declarations do."""
    for key, (low, high, closed) in LIMITS.items():
        value = values.get(key)
        if value is None:
            continue
        below = value < low if closed else value <= low
        if below or (high is not None and value > high) or value != value:
            bounds = f"{'>=' if closed else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise DlrmUsageError(f"{key} must be {bounds}, got {value}")


def request_from_options(
    values: dict[str, Any],
    chosen: set[str],
    given: set[str],
    store: Path,
    name: str | None = None,
    **rest: Any,
) -> TrainRequest:
    """The request that ``dlrm train``'s option values describe, for the command line and the Python API.

    ``values`` holds every option (``option_defaults``' keys), with layer sizes and column lists as tuples
    and ``rating_range`` as a (low, high) pair. ``chosen`` names the options set by the user or a
    ``--config`` file, which the data's and the objective's presets leave alone; ``given`` those set by the
    user alone. ``rest``: the request's other fields (``resume``, ``processes``, ``show_plan``)."""
    data = _data_source(values, chosen)
    config = RunConfig(train=_train_config(values, chosen, given, data), data=data)
    return TrainRequest(config=config, store=Path(store), name=name, given=frozenset(given), **rest)


def _train_config(values: dict[str, Any], chosen: set[str], given: set[str], data: DataSource) -> TrainConfig:
    from dlrm_cli.data.sources import without_ratings

    fields = {name: values[name] for name in TRAIN_FIELDS}
    kind = str(values["data"]).partition(":")[0]
    fields.update({key: value for key, value in PRESETS.get(kind, {}).items() if key not in chosen})
    if fields["objective"] == "auto":  # resolved here, so that the ranking preset applies and the record says it
        fields["objective"] = "ranking" if without_ratings(data) else "rating"
    preset = OBJECTIVE_PRESETS.get(fields["objective"], {})
    fields.update({key: value for key, value in preset.items() if key not in chosen})
    if fields["embeddings"] == "plain" and "sparse_lr" in given:  # a preset's or a file's value is no mistake
        raise DlrmUsageError("--sparse-lr applies to --embeddings fused; the plain path trains tables with --lr")
    try:
        return TrainConfig(**fields)
    except ValueError as error:
        raise DlrmUsageError(str(error)) from None


def _data_source(values: dict[str, Any], chosen: set[str]) -> DataSource:
    from dlrm_cli.data.sources import DATA_KINDS, parse_data_option

    kind = str(values["data"]).partition(":")[0]
    sizes = [key for key in SYNTHETIC_SIZES if key in chosen]
    if sizes and kind != "synthetic" and kind in DATA_KINDS:
        raise DlrmUsageError(f"--{sizes[0]} applies only to --data synthetic")
    synthetic = None
    if kind == "synthetic":
        try:
            synthetic = SyntheticSpec(**{key: values[key] for key in SYNTHETIC_SIZES})
        except ValueError as error:
            raise DlrmUsageError(str(error)) from None
    return parse_data_option(
        values["data"],
        split=values["split"],
        seed=values["seed"] if values["split_seed"] is None else values["split_seed"],
        validation=values["val_fraction"],
        columns=_csv_columns(values),
        synthetic=synthetic,
        time_features=tuple(values["time_features"] or ()),
    )


def _csv_columns(values: dict[str, Any]) -> CsvColumns | None:
    """The CSV column options as ``CsvColumns``; None when none of them was set."""
    if all(values[key] is None for key in CSV_OPTIONS):
        return None
    names: dict[str, str | None] = {}
    for key in ("user", "item", "rating", "time", "title"):
        text = values[f"{key}_col"]
        if text is not None and not text.strip():
            raise DlrmUsageError(f"--{key}-col must not be empty")
        names[key] = text.strip() if text is not None else None
    lists = {key: tuple(values[f"{key}_cols"] or ()) for key in ("dense", "sparse")}
    return CsvColumns(**names, **lists, rating_range=values["rating_range"])


# From Python values (``dlrm_cli.train``) ---------------------------------------------------------------
OPTIONAL_INTS = ("threads", "patience", "split_seed")
LISTS = ("bottom_mlp", "top_mlp", "dense_cols", "sparse_cols", "time_features")
FRAME_FOLDER = ".data"  # in the store: DataFrames given to ``dlrm_cli.train``, as CSV files


def python_options(options: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Every option's value (``option_defaults``, with ``options`` over them) and the names given, checked
    as the command line checks its options. Lists may be sequences or comma-separated strings."""
    values = option_defaults()
    unknown = sorted(set(options) - set(values))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(values), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DlrmUsageError(f"train() has no option {unknown[0]!r}{hint}")
    for key, value in options.items():
        values[key] = _python_value(key, value, values[key])
    check_limits(values)
    return values, set(options)


def _python_value(key: str, value: Any, default: Any) -> Any:
    if key in LISTS or key == "rating_range":
        return None if value is None and default is None else _python_list(key, value)
    if value is None and (default is None or key in OPTIONAL_INTS):
        return None
    if isinstance(default, bool):
        wanted, ok = "True or False", isinstance(value, bool)
    elif isinstance(default, int) or key in OPTIONAL_INTS:
        wanted, ok = "a whole number", _integral(value)
    elif isinstance(default, float):
        wanted, ok = "a number", _number(value)
    else:
        wanted, ok = "a string", isinstance(value, str)
    if not ok:
        raise DlrmUsageError(f"{key} must be {wanted}, got {value!r}")
    if isinstance(default, float):
        return float(value)
    return int(value) if _integral(value) else value  # numpy's integers too, as plain ints


def _integral(value: Any) -> bool:
    """A whole number: Python's or numpy's (``numbers.Integral``), never a bool."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _python_list(key: str, value: Any) -> tuple[Any, ...]:
    """Layer sizes, column names or a rating range, from a sequence or a comma-separated string."""
    try:
        parts = [part.strip() for part in value.split(",")] if isinstance(value, str) else list(value)
    except TypeError:
        parts = []
    if key.endswith("_mlp"):
        if not parts or not all(_whole(part) for part in parts):
            raise DlrmUsageError(f"{key} must be positive layer sizes such as (512, 256), got {value!r}")
        return tuple(int(part) for part in parts)
    if key == "rating_range":
        if len(parts) != 2 or not all(_number(part) for part in parts) or not float(parts[0]) < float(parts[1]):
            raise DlrmUsageError(f"rating_range must be (low, high) with low below high, got {value!r}")
        return (float(parts[0]), float(parts[1]))
    names = [str(part) for part in parts]
    if not names or not all(names) or len(set(names)) != len(names):
        raise DlrmUsageError(f"{key} must name distinct columns, none empty, got {value!r}")
    return tuple(names)


def _whole(value: Any) -> bool:
    """A layer size: a positive whole number, or its digits."""
    if isinstance(value, str):
        return value.isdigit() and int(value) >= 1
    return _integral(value) and value >= 1


def _number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def data_option(data: Any, store: Path, values: dict[str, Any]) -> str:
    """``--data`` for what ``dlrm_cli.train`` was given: a spec (``synthetic``, ``csv:FILE``, ...) as is, a
    folder as ``movielens:DIR``, another path as ``csv:FILE``, and a DataFrame as ``csv:`` a copy of it in
    the store (``write_frame``)."""
    from dlrm_cli.data.sources import DATA_KINDS

    if hasattr(data, "to_csv") and hasattr(data, "columns"):
        return f"csv:{write_frame(data, store, values)}"
    if isinstance(data, str) and (data == "synthetic" or data.partition(":")[0] in DATA_KINDS[1:]):
        return data
    if isinstance(data, str | Path):
        path = Path(data).expanduser()
        return f"movielens:{path}" if path.is_dir() else f"csv:{path}"
    raise DlrmUsageError(
        f"data must be a pandas DataFrame, a path or a spec such as csv:FILE, got {type(data).__name__}"
    )


def write_frame(frame: Any, store: Path, values: dict[str, Any]) -> Path:
    """Write ``frame`` as ``STORE/.data/frame-HASH.csv`` (HASH: of the file's bytes) and return that path, so
    that the checkpoint records a file that ``evaluate`` and ``report`` read later, as with ``csv:FILE``.
    The same frame gives the same file, written once. Refuses an empty frame or a column option naming a
    column it lacks."""
    import contextlib
    import hashlib
    import os
    import tempfile

    if len(frame) == 0:
        raise DlrmUsageError("the DataFrame has no rows")
    columns = [str(name) for name in frame.columns]
    named = [("user_col", values["user_col"] or "user"), ("item_col", values["item_col"] or "item")]
    named += [(key, values[key]) for key in ("rating_col", "time_col", "title_col") if values[key] is not None]
    named += [(key, name) for key in ("dense_cols", "sparse_cols") for name in values[key] or ()]
    for key, name in named:
        if name not in columns:
            shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
            raise DlrmUsageError(f"{key}: the DataFrame has no column {name!r} (its columns: {shown})")
    CheckpointStore(store).ensure_writable()
    folder = store / FRAME_FOLDER
    temporary = None
    try:
        folder.mkdir(exist_ok=True)
        handle, name = tempfile.mkstemp(dir=folder, prefix=".frame-", suffix=".csv")  # one per call, threads too
        os.close(handle)
        temporary = Path(name)
        frame.to_csv(temporary, index=False)
        digest = hashlib.sha256()
        with temporary.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 24), b""):
                digest.update(chunk)
        path = folder / f"frame-{digest.hexdigest()[:16]}.csv"
        os.replace(temporary, path)
    except OSError as error:
        if temporary is not None:
            with contextlib.suppress(OSError):
                temporary.unlink()
        raise DlrmError(f"cannot write the DataFrame into {folder}: {error.strerror or error}") from None
    return path
