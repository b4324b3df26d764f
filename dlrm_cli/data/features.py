"""From raw ratings to model inputs: splits, id vocabularies, side features, normalisation.

Everything learned from data (id vocabularies, side-feature vocabularies, normalisation statistics,
rating counts) comes from the training rows only; validation rows come out of the training part.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dlrm_cli.config import FileSource
from dlrm_cli.data.catalog import BAG_FEATURES, PAD, Catalog, Dataset, EntityTable, Ratings
from dlrm_cli.data.context import RawContext, build_context
from dlrm_cli.data.readers import RawData, SideTable
from dlrm_cli.errors import DataError, DlrmUsageError


def parse_split(text: str) -> tuple[str, object]:
    """``random:0.1``, ``temporal:0.1`` or ``files:TRAIN,TEST``."""
    kind, _, arg = text.partition(":")
    if kind in ("random", "temporal"):
        try:
            fraction = float(arg)
        except ValueError:
            raise DlrmUsageError(f"--split {kind}: needs a test fraction such as {kind}:0.1, got {text!r}") from None
        if not 0 < fraction < 1:
            raise DlrmUsageError(f"--split fraction must be between 0 and 1, got {arg}")
        return kind, fraction
    if kind == "files":
        parts = [p for p in arg.split(",") if p.strip()]
        if len(parts) != 2:
            raise DlrmUsageError(f"--split files: needs two files, TRAIN,TEST, got {text!r}")
        return kind, tuple(p.strip() for p in parts)
    raise DlrmUsageError(f"--split must be random:FRACTION, temporal:FRACTION or files:TRAIN,TEST, got {text!r}")


def split_rows(raw: RawData, split: str, seed: int, validation: float) -> dict[str, np.ndarray]:
    """Row indices of the train, validation and test sets, each in file order."""
    kind, arg = parse_split(split)
    n = len(raw)
    if kind == "random":
        # The agreed protocol: permute with default_rng(seed), the first floor(n * fraction) rows are the test set.
        order = np.random.default_rng(seed).permutation(n)
        n_test = math.floor(n * float(arg) + 1e-9)
        test, rest = order[:n_test], order[n_test:]
    elif kind == "temporal":
        if raw.time is None:
            raise DlrmUsageError("--split temporal needs timestamps, and this data has none (see --time-col)")
        is_test = _latest_per_user(raw.user, raw.time, np.arange(n), float(arg))
        test, rest = np.flatnonzero(is_test), np.flatnonzero(~is_test)
    else:
        test, rest = np.arange(raw.n_train, n), np.arange(raw.n_train)
    if kind == "temporal":
        is_val = _latest_per_user(raw.user[rest], raw.time[rest], rest, validation)
        val, train = rest[is_val], rest[~is_val]
    else:
        pick = np.random.default_rng([seed, 1]).permutation(len(rest))
        n_val = math.floor(len(rest) * validation + 1e-9)
        val, train = rest[pick[:n_val]], rest[pick[n_val:]]
    if len(train) == 0 or len(test) == 0 or len(val) == 0:
        raise DataError(
            f"the split leaves {len(train)} training, {len(val)} validation and {len(test)} test ratings; "
            "every set needs at least one"
        )
    return {"train": np.sort(train), "validation": np.sort(val), "test": np.sort(test)}


def _latest_per_user(user: np.ndarray, time: np.ndarray, index: np.ndarray, fraction: float) -> np.ndarray:
    """True for each user's latest floor(count * fraction) ratings (ties broken by file order)."""
    order = np.lexsort((index, time, user))
    sorted_users = user[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    position = np.arange(len(order)) - np.repeat(starts, counts)
    from_end = np.repeat(counts, counts) - 1 - position
    take = np.floor(np.repeat(counts, counts) * fraction + 1e-9)
    mask = np.zeros(len(order), dtype=bool)
    mask[order] = from_end < take
    return mask


def _unify(*arrays: np.ndarray) -> list[np.ndarray]:
    """Ids as one dtype: int64 when all are integers, else strings."""
    if all(a.dtype.kind in "iu" for a in arrays):
        return [a.astype(np.int64) for a in arrays]
    return [a.astype(str) for a in arrays]


def build_entities(
    kind: str, all_ids: np.ndarray, train_ids: np.ndarray, side: SideTable | None, unshown: tuple[str, ...] = ()
) -> EntityTable:
    """One row per known entity plus a neutral last row for ids never seen at all. An item keeps its raw side
    values to show (``EntityTable.described``), less the columns ``unshown`` (ones its title already says)."""
    side = side or SideTable(ids=np.array([], dtype=all_ids.dtype))
    all_ids, train_ids, side_ids = _unify(all_ids, train_ids, side.ids)
    keys = np.unique(np.concatenate([all_ids, side_ids]))
    vocab, train_counts = np.unique(train_ids, return_counts=True)
    position = np.minimum(np.searchsorted(vocab, keys), len(vocab) - 1)
    in_train = vocab[position] == keys
    id_rows = np.where(in_train, position + 1, 0)  # row 0 is the shared out-of-vocabulary row
    counts = np.where(in_train, train_counts[position], 0)

    side_order = np.argsort(side_ids, kind="stable")
    side_pos = np.searchsorted(side_ids[side_order], keys)
    side_pos = np.minimum(side_pos, max(len(side_ids) - 1, 0))
    has_side = (side_ids[side_order][side_pos] == keys) if len(side_ids) else np.zeros(len(keys), bool)
    side_rows = side_order[side_pos] if len(side_ids) else side_pos

    dense_names = [f"{kind}_log_ratings"]
    columns = [np.log1p(counts.astype(np.float64))]
    for name, values in side.dense.items():
        dense_names.append(f"{kind}_{name}")
        columns.append(np.where(has_side, values[side_rows] if len(side_ids) else np.nan, np.nan))
    dense = np.stack(columns, axis=1)
    mean = np.nanmean(dense[in_train], axis=0)
    std = np.nanstd(dense[in_train], axis=0)
    dense = (dense - mean) / np.where(std > 0, std, 1.0)
    dense = np.nan_to_num(dense, nan=0.0)  # a missing value sits at the training mean
    dense = np.vstack([dense, np.zeros((1, dense.shape[1]))])

    sparse, sizes = {}, {}
    for name, values in side.sparse.items():
        tokens = [
            [t for t in str(values[row]).split("|") if t] if ok else []
            for row, ok in zip(side_rows.tolist(), has_side.tolist(), strict=True)
        ]
        known = sorted({t for toks, ok in zip(tokens, in_train.tolist(), strict=True) if ok for t in toks})
        index = {token: i + 1 for i, token in enumerate(known)}  # 0: a value never seen in training
        width = max(1, max((len(t) for t in tokens), default=1))
        matrix = np.full((len(keys) + 1, width), PAD, dtype=np.int64)
        for row, toks in enumerate(tokens):
            for slot, token in enumerate(toks):
                matrix[row, slot] = index.get(token, 0)
        sparse[name] = torch.from_numpy(matrix)
        sizes[name] = len(known) + 1

    described: dict[str, torch.Tensor | list[str]] = {}
    if kind == "item":  # the raw values shown beside an item
        for index, name in enumerate(side.dense, start=1):  # columns[0] is the rating count
            if name in unshown:
                continue
            described[name] = torch.from_numpy(np.append(columns[index], np.nan).astype(np.float64))
        for name, values in side.sparse.items():
            shown = [str(values[r]) if ok else "" for r, ok in zip(side_rows.tolist(), has_side.tolist(), strict=True)]
            described[name] = [*shown, ""]
    titles = None
    if side.titles is not None:
        titles = [
            str(side.titles[r]) if ok else "" for r, ok in zip(side_rows.tolist(), has_side.tolist(), strict=True)
        ]
        titles.append("")
    return EntityTable(
        kind=kind,
        keys=keys,
        id_rows=torch.from_numpy(np.append(id_rows, 0)).long(),
        id_table_rows=len(vocab) + 1,
        has_oov=True,
        dense=torch.from_numpy(dense).float(),
        dense_names=dense_names,
        sparse=sparse,
        sparse_sizes=sizes,
        titles=titles,
        described=described,
    )


def build_dataset(raw: RawData, source: FileSource) -> Dataset:
    """Splits, vocabularies and features of ``raw``, as ``source`` asks; the dataset records ``source``."""
    rows = split_rows(raw, source.split, source.seed, source.validation)
    train = rows["train"]
    users = build_entities("user", raw.user, raw.user[train], raw.users)
    unshown = ("release_year",) if raw.release.startswith("ml") else ()  # MovieLens: read from the title
    items = build_entities("item", raw.item, raw.item[train], raw.items, unshown)
    user_rows = torch.from_numpy(np.searchsorted(users.keys, _unify(raw.user, users.keys)[0]))
    item_rows = torch.from_numpy(np.searchsorted(items.keys, _unify(raw.item, items.keys)[0]))
    raw_context = with_time_features(raw, train, source.time_features)
    context = build_context(raw_context, train) if raw_context else None
    rows_context = context.encode(raw_context) if context is not None else None
    everything = Ratings(user_rows, item_rows, torch.from_numpy(raw.rating), rows_context)
    low, high = raw.rating_range
    catalog = Catalog(users=users, items=items, rating_min=low, rating_max=high, implicit=raw.implicit, context=context)
    return Dataset(
        catalog=catalog,
        train=everything.subset(torch.from_numpy(rows["train"])),
        validation=everything.subset(torch.from_numpy(rows["validation"])),
        test=everything.subset(torch.from_numpy(rows["test"])),
        source=source,
    )


SECONDS_A_DAY = 86400.0


def with_time_features(raw: RawData, train: np.ndarray, names: tuple[str, ...]) -> RawContext:
    """``raw``'s context columns and the time features ``names`` (``dlrm_cli.data.sources.TIME_FEATURES``)
    derived from each rating's timestamp. The users' and items' first ratings come from the training rows."""
    context = RawContext(dict(raw.context.dense), dict(raw.context.sparse))
    if not names:
        return context
    taken = {*context.dense, *context.sparse, "user_id", "item_id", *BAG_FEATURES.values()}
    for side in (raw.users, raw.items):
        taken |= {*side.dense, *side.sparse} if side is not None else set()
    clash = sorted(taken & set(names))
    if clash:
        raise DlrmUsageError(f"--time-features {clash[0]} would replace the data's own column {clash[0]!r}")
    if raw.time is None:
        raise DlrmUsageError("--time-features needs timestamps, and this data has none (see --time-col)")
    seconds = raw.time.astype(np.float64)
    for name in names:
        if name == "year":
            context.dense[name] = 1970.0 + seconds / (365.2425 * SECONDS_A_DAY)
        elif name in ("user_days", "item_days"):
            owner = raw.user if name == "user_days" else raw.item
            keys, inverse = np.unique(owner, return_inverse=True)
            first = np.full(len(keys), np.inf)
            np.minimum.at(first, inverse[train], seconds[train])
            since = seconds - np.where(np.isfinite(first[inverse]), first[inverse], seconds)
            context.dense[name] = np.maximum(since, 0.0) / SECONDS_A_DAY
        elif name == "weekday":
            days = np.floor(seconds / SECONDS_A_DAY).astype(np.int64)
            context.sparse[name] = np.array(["mon", "tue", "wed", "thu", "fri", "sat", "sun"])[(days + 3) % 7]
        elif name == "user_day":
            days = np.floor(seconds / SECONDS_A_DAY).astype(np.int64)
            context.sparse[name] = np.char.add(np.char.add(raw.user.astype(str), ":"), days.astype(str))
        elif name == "hour":
            context.sparse[name] = ((seconds // 3600).astype(np.int64) % 24).astype(str)
        else:
            raise DlrmUsageError(f"unknown time feature {name!r}")
    return context
