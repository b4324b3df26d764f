"""What a checkpoint's ``meta.json`` must hold, and the metric that chose its epoch.

A record whose checksum matches but whose fields do not (edited by hand, rewritten by a tool) is *damaged*.
``record_problem`` says what is wrong, in the one place the store reads records, so that every command
lists such a checkpoint as damaged and refuses it in one line instead of failing on the field it reads.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from dlrm_cli.config import CsvColumns, FileSource, ModelConfig, SyntheticSpec, TableConfig, TrainConfig

SOURCES: dict[str, type] = {"synthetic": SyntheticSpec, "movielens": FileSource, "csv": FileSource}
EPOCH_FIELDS = ("epoch", "train_loss", "lr", "samples_per_s")  # what every line of a run's history holds

# The metric that chooses a run's best epoch, by its name in the record: the key of its value among the
# validation metrics, and whether higher is better. A model with a rating head is chosen by RMSE, one with
# only a ranking head by NDCG@10 (``training.run.Best``).
METRICS: dict[str, tuple[str, bool]] = {"RMSE": ("rmse", False), "NDCG@10": ("ndcg", True)}


class Damaged(ValueError):
    """A field of the record is missing or not what dlrm writes."""


def record_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with a record in the current format (``upgrade_meta``'s result), or None."""
    try:
        _check_record(meta)
    except Damaged as error:
        return f"meta.json is damaged ({error})"
    return None


def format_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with a record's ``format``, which must be a whole number to be compared with those dlrm
    reads (a format written as text is a damaged record, not a format from another version)."""
    if _fits(meta["format"], "int"):
        return None
    return f"meta.json is damaged ('format' is {_shown(meta['format'])}, not a whole number)"


def created_at(value: object) -> datetime | None:
    """The moment a record's ``created`` names (UTC when it names no zone), or None if it names none."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
        return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


@dataclass(frozen=True)
class Selection:
    """The validation metric that chose a checkpoint's epoch, and its value there."""

    metric: str  # a key of METRICS
    value: float | None
    higher_is_better: bool

    @property
    def label(self) -> str:
        """``val RMSE 0.8443``, as the listing shows it."""
        value = "—" if self.value is None else f"{self.value:.4f}"
        return f"val {self.metric} {value}"

    def rank(self) -> float:
        """Lower is better, whatever the metric's direction; a checkpoint without a value ranks last."""
        if self.value is None or not math.isfinite(self.value):
            return math.inf
        return -self.value if self.higher_is_better else self.value

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "higher_is_better": self.higher_is_better}


def selection_of(meta: dict[str, Any]) -> Selection:
    """The metric a checkpoint's run chose its epoch by: as recorded, or for a checkpoint written before
    dlrm recorded it, RMSE where the run measured it (a rating head) and NDCG@10 where it did not."""
    recorded = meta.get("selection")
    if isinstance(recorded, dict):
        return Selection(recorded["metric"], recorded["value"], recorded["higher_is_better"])
    validation = (meta.get("metrics") or {}).get("validation") or {}
    heads = (meta.get("model") or {}).get("heads") or ["rating"]
    metric = "RMSE" if "rmse" in validation or "rating" in heads else "NDCG@10"
    key, higher = METRICS[metric]
    return Selection(metric, validation.get(key), higher)


def _check_record(meta: dict[str, Any]) -> None:
    if created_at(meta.get("created")) is None:
        raise Damaged(f"'created' is {_shown(meta.get('created'))}, not a date")
    for key, kind in (("complete", "bool"), ("files", "dict"), ("best_epoch", "int"), ("global_mean", "float")):
        _need(meta, key, kind)
    for key, kind in (("dlrm_version", "str"), ("epochs_done", "int"), ("seconds", "float"), ("stages", "dict")):
        _need(meta, key, kind, optional=True)
    if not all(isinstance(value, str) for value in meta["files"].values()):
        raise Damaged("'files' holds a checksum that is not text")
    train, model = _check_run(meta), _check_model(meta)
    _check_metrics(meta, model)
    for key, run_value, model_value in (
        ("embedding_dim", train.embedding_dim, model.embedding_dim),
        ("bottom_mlp", (*train.bottom_mlp, train.embedding_dim), model.bottom_mlp),
        ("top_mlp", train.top_mlp, model.top_mlp),
        ("ensemble", train.ensemble, model.ensemble),
    ):
        if run_value != model_value:
            raise Damaged(f"the run's {key} {_shown(run_value)} does not match its model's {_shown(model_value)}")
    if "selection" in meta:
        _check_selection(meta["selection"])


def _check_run(meta: dict[str, Any]) -> TrainConfig:
    run = _need(meta, "run", "dict")
    train = _fields_of(TrainConfig, run.get("train"), "run.train")
    data = run.get("data")
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in SOURCES:
        raise Damaged(f"'run.data' names no kind of data that dlrm reads (kind {_shown(kind)})")
    fields_only = data if SOURCES[kind] is FileSource else {key: data[key] for key in data if key != "kind"}
    source = _fields_of(SOURCES[kind], fields_only, "run.data")
    if source.get("columns") is not None:
        _fields_of(CsvColumns, source["columns"], "run.data.columns")
    try:  # the data source's own checks wait for its use: one of them weighs it against this machine
        return TrainConfig.from_dict(train)
    except (TypeError, ValueError) as error:
        raise Damaged(f"'run.train': {error}") from None


def _check_model(meta: dict[str, Any]) -> ModelConfig:
    model = _fields_of(ModelConfig, meta.get("model"), "model")
    for key in ("rating_min", "rating_max"):  # every format wrote the scale; its default would shift every score
        if key not in model:
            raise Damaged(f"'model.{key}' is missing")
    for table in model["tables"]:
        _fields_of(TableConfig, table, "model.tables")
    try:
        return ModelConfig.from_dict(model)
    except (TypeError, ValueError) as error:
        raise Damaged(f"'model': {error}") from None


def _check_metrics(meta: dict[str, Any], model: ModelConfig) -> None:
    metrics = _need(meta, "metrics", "dict")
    validation = metrics.get("validation")
    if not _numbers(validation):
        raise Damaged("'metrics.validation' is not a table of numbers")
    for key in ("validation_baseline", "validation_noise_floor"):
        if metrics.get(key) is not None and not _numbers(metrics[key]):
            raise Damaged(f"'metrics.{key}' is not a table of numbers")
    history = _need(meta, "history", "list")
    if not all(_numbers(epoch) and all(key in epoch for key in EPOCH_FIELDS) for epoch in history):
        raise Damaged(f"'history' holds an epoch that is not a table of numbers with {', '.join(EPOCH_FIELDS)}")
    if "rating" in model.heads and ("rmse" not in validation or any("val_rmse" not in epoch for epoch in history)):
        raise Damaged("a model with a rating head has no validation RMSE")


def _check_selection(selection: object) -> None:
    if not isinstance(selection, dict) or selection.get("metric") not in METRICS:
        raise Damaged(f"'selection' names no metric dlrm chooses by ({_shown(selection)})")
    value, higher = selection.get("value"), selection.get("higher_is_better")
    if higher is not METRICS[selection["metric"]][1] or not (value is None or _fits(value, "float")):
        raise Damaged(f"'selection' is not what dlrm writes ({_shown(selection)})")


def _need(record: dict[str, Any], key: str, kind: str, optional: bool = False) -> Any:
    """``record[key]``, which must be of ``kind`` (an annotation as ``_fits`` reads it) unless it is absent
    and ``optional``."""
    if key not in record:
        if optional:
            return None
        raise Damaged(f"'{key}' is missing")
    if not _fits(record[key], kind):
        raise Damaged(f"'{key}' is {_shown(record[key])}, not {_KINDS.get(kind, kind)}")
    return record[key]


def _fields_of(cls: type, raw: object, where: str) -> dict[str, Any]:
    """``raw`` as the record of dataclass ``cls``: no unknown key, every field without a default present,
    and each value of its field's type."""
    if not isinstance(raw, dict):
        raise Damaged(f"'{where}' is {_shown(raw)}, not a table")
    known = {field.name: field for field in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise Damaged(f"'{where}' has a field dlrm does not write: {unknown[0]!r}")
    for name, field in known.items():
        if name not in raw:
            if field.default is MISSING and field.default_factory is MISSING:
                raise Damaged(f"'{where}.{name}' is missing")
        elif not _fits(raw[name], str(field.type)):
            raise Damaged(f"'{where}.{name}' is {_shown(raw[name])}, not {_KINDS.get(str(field.type), field.type)}")
    return raw


_KINDS = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false", "dict": "a table",
          "list": "a list"}  # fmt: skip


def _fits(value: object, annotation: str) -> bool:
    """Whether a JSON value can stand for a field annotated ``annotation`` (a string, as the config module's
    are): ``int``, ``float``, ``str``, ``bool``, ``None``, ``tuple[X, ...]``, ``tuple[X, Y]``, unions of
    these, and any other name (a nested record) as a table."""
    options = [option.strip() for option in annotation.split("|")]
    return any(_fits_one(value, option) for option in options)


def _fits_one(value: object, kind: str) -> bool:
    if kind.startswith("tuple["):
        inner = kind[len("tuple[") : -1]
        if not isinstance(value, (list, tuple)):
            return False
        if inner.endswith(", ..."):
            return all(_fits(item, inner[: -len(", ...")]) for item in value)
        parts = inner.split(", ")
        return len(value) == len(parts) and all(_fits(item, part) for item, part in zip(value, parts, strict=True))
    simple = {
        "None": lambda: value is None,
        "bool": lambda: isinstance(value, bool),
        "int": lambda: isinstance(value, int) and not isinstance(value, bool),
        "float": lambda: isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": lambda: isinstance(value, str),
        "list": lambda: isinstance(value, list),
    }
    return simple[kind]() if kind in simple else isinstance(value, dict)


def _numbers(record: object) -> bool:
    return isinstance(record, dict) and all(_fits(value, "float") for value in record.values())


def _shown(value: object) -> str:
    """A value as a message quotes it: short, whatever it is."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
