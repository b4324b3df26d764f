"""Context features: columns that describe the rating itself (the channel, the hour, the device), not its
user or its item, so that each row carries its own values.

A numeric context column enters the bottom MLP standardised with the training rows' mean and deviation; a
categorical one (``|``-separated values for several) is a sparse feature of the KJT with its own table,
whose vocabulary comes from the training rows only (row 0: a value never seen in training).
Where a prediction gives no value, the column takes its default: the training mean of a numeric column,
the most frequent training value of a categorical one (none, a zero vector, when no value covers 1% of the
training rows).

Legend for shapes: N rows, L values of a multi-valued column.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dlrm_cli.errors import DlrmUsageError

TYPICAL = 0.01  # a categorical column's default is its most frequent value when that covers this share of rows
PAD = -1  # as ``dlrm_cli.data.catalog.PAD``: fills the unused slots of a multi-valued value


@dataclass
class RawContext:
    """Each rating's raw context values, in file order: numeric columns as floats (NaN: missing), categorical
    ones as strings ("": missing)."""

    dense: dict[str, np.ndarray] = field(default_factory=dict)
    sparse: dict[str, np.ndarray] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.dense or self.sparse)

    def take(self, rows: np.ndarray) -> RawContext:
        return RawContext(
            {name: values[rows] for name, values in self.dense.items()},
            {name: values[rows] for name, values in self.sparse.items()},
        )


@dataclass
class ContextRows:
    """Context features of N ratings as model inputs: ``dense`` N x Dc (standardised) and, per categorical
    column, N x L vocabulary rows padded with ``PAD``."""

    dense: torch.Tensor
    sparse: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def take(self, index: torch.Tensor) -> ContextRows:
        return ContextRows(self.dense[index], {name: rows[index] for name, rows in self.sparse.items()})

    def expand(self, n: int) -> ContextRows:
        """One row (this one's first) repeated ``n`` times."""
        return ContextRows(
            self.dense[:1].expand(n, -1), {name: rows[:1].expand(n, -1) for name, rows in self.sparse.items()}
        )


@dataclass
class ContextTable:
    """What a model knows of its context columns: their names, the numeric ones' training statistics, the
    categorical ones' vocabularies, and each column's default."""

    dense: list[str]
    mean: list[float]
    std: list[float]
    vocabularies: dict[str, list[str]]
    defaults: dict[str, float | str]

    @property
    def names(self) -> list[str]:
        return [*self.dense, *self.vocabularies]

    @property
    def dense_names(self) -> list[str]:
        """The model's names of the numeric columns (``context_`` and the column)."""
        return [f"context_{name}" for name in self.dense]

    def sparse_sizes(self) -> dict[str, int]:
        """Each categorical column's table rows: its vocabulary and the row of values never seen in training."""
        return {name: len(vocabulary) + 1 for name, vocabulary in self.vocabularies.items()}

    def encode(self, raw: RawContext) -> ContextRows:
        """Model inputs for raw values (each column's array, N rows)."""
        n = len(next(iter([*raw.dense.values(), *raw.sparse.values()])))
        columns = [np.asarray(raw.dense[name], dtype=np.float64) for name in self.dense]
        dense = np.stack(columns, axis=1) if columns else np.zeros((n, 0))
        dense = (dense - np.asarray(self.mean)) / np.asarray(self.std)
        dense = np.nan_to_num(dense, nan=0.0)  # a missing value sits at the training mean
        sparse = {}
        for name, vocabulary in self.vocabularies.items():
            index = {token: i + 1 for i, token in enumerate(vocabulary)}
            values, inverse = np.unique(np.asarray(raw.sparse[name], dtype=str), return_inverse=True)
            tokens = [_tokens(value) for value in values.tolist()]  # each distinct value split once
            width = max(1, max((len(t) for t in tokens), default=1))
            distinct = np.full((len(values), width), PAD, dtype=np.int64)
            for row, toks in enumerate(tokens):
                distinct[row, : len(toks)] = [index.get(token, 0) for token in toks]
            sparse[name] = torch.from_numpy(distinct[inverse.reshape(-1)])
        return ContextRows(torch.from_numpy(dense).float(), sparse)

    def parse(self, given: dict[str, Any] | None) -> tuple[ContextRows, list[str]]:
        """One context from ``given`` (column -> value, as typed or as JSON gives it), each column not given
        at its default; returns the row and the columns that took their default. A column the model does not
        have, or a number that is not one, is a ``DlrmUsageError``."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.names))
        if unknown:
            known = ", ".join(self.names) or "none"
            raise DlrmUsageError(f"unknown context column {unknown[0]!r} (this model's context columns: {known})")
        dense: dict[str, np.ndarray] = {}
        for name in self.dense:
            value = given.get(name, self.defaults[name])
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                raise DlrmUsageError(f"context column {name!r} is numeric, got {_shown(value)}") from None
            if isinstance(value, bool) or not math.isfinite(number):
                raise DlrmUsageError(f"context column {name!r} needs a finite number, got {_shown(value)}")
            dense[name] = np.array([number])
        sparse = {}
        for name in self.vocabularies:
            value = given.get(name, self.defaults[name])
            if not isinstance(value, (str, numbers.Integral)) or isinstance(value, bool):
                raise DlrmUsageError(f"context column {name!r} takes a value as text, got {_shown(value)}")
            value = str(int(value)) if isinstance(value, numbers.Integral) else value
            sparse[name] = np.array([str(value)])
        defaulted = [name for name in self.names if name not in given]
        return self.encode(RawContext(dense, sparse)), defaulted

    def state(self) -> dict[str, object]:
        return {
            "dense": list(self.dense),
            "mean": list(self.mean),
            "std": list(self.std),
            "vocabularies": {name: list(v) for name, v in self.vocabularies.items()},
            "defaults": dict(self.defaults),
        }

    @classmethod
    def from_state(cls, state: dict) -> ContextTable:
        return cls(
            dense=list(state["dense"]),
            mean=[float(v) for v in state["mean"]],
            std=[float(v) for v in state["std"]],
            vocabularies={name: list(v) for name, v in state["vocabularies"].items()},
            defaults=dict(state["defaults"]),
        )


def build_context(raw: RawContext, train: np.ndarray) -> ContextTable:
    """The context table of ``raw``, learned from the training rows ``train`` only."""
    mean, std, defaults = [], [], {}
    for name, values in raw.dense.items():
        seen = np.asarray(values[train], dtype=np.float64)
        seen = seen[np.isfinite(seen)]
        centre = float(seen.mean()) if len(seen) else 0.0
        spread = float(seen.std()) if len(seen) else 0.0
        mean.append(centre)
        std.append(spread if spread > 0 else 1.0)
        defaults[name] = centre
    vocabularies = {}
    for name, values in raw.sparse.items():
        distinct, times = np.unique(np.asarray(values[train], dtype=str), return_counts=True)
        counts: Counter[str] = Counter()
        whole: Counter[str] = Counter()
        for value, count in zip(distinct.tolist(), times.tolist(), strict=True):
            for token in _tokens(value):
                counts[token] += count
            if _tokens(value):
                whole[value] += count
        vocabularies[name] = sorted(counts)
        top = whole.most_common(1)[0] if whole else ("", 0)
        # a column of many rare values (a session, a user and day) has no typical value: no value, a zero vector
        defaults[name] = top[0] if top[1] >= TYPICAL * len(train) else ""
    return ContextTable(list(raw.dense), mean, std, vocabularies, defaults)


def parse_assignments(text: str | None) -> dict[str, str]:
    """``channel=app,hour=20`` as a mapping; a part without ``=`` or a column named twice is a usage error."""
    given: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise DlrmUsageError(f"--context takes COLUMN=VALUE pairs separated by commas, got {part.strip()!r}")
        if name in given:
            raise DlrmUsageError(f"--context names column {name!r} twice")
        given[name] = value.strip()
    return given


def _shown(value: object) -> str:
    """A value as its JSON spelling where it has one (``true``, ``null``), else as Python writes it."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _tokens(value: object) -> list[str]:
    text = "" if value is None else str(value)
    if text == "nan":
        return []
    return [token for token in text.split("|") if token]


def filled_context(table: ContextTable, raw: RawContext, n: int) -> RawContext:
    """``raw`` (N rows) with every column of ``table`` that it lacks at that column's default."""
    dense = {
        name: raw.dense[name] if name in raw.dense else np.full(n, float(table.defaults[name])) for name in table.dense
    }
    sparse = {
        name: raw.sparse[name] if name in raw.sparse else np.full(n, str(table.defaults[name]))
        for name in table.vocabularies
    }
    return RawContext(dense, sparse)
