"""Vectorised readers for MovieLens releases and CSV interaction tables.

Each reader returns ``RawData``: the ratings in file order with raw ids, plus what is known about users
and items. Parsing goes through pandas' C parser (several million rows per second); every failure a user
can cause becomes a ``DataError`` naming the file and, for a bad row, its line.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from dlrm_cli.config import CsvColumns
from dlrm_cli.data.context import RawContext
from dlrm_cli.data.headers import implicit_csv
from dlrm_cli.errors import DataError

ML_GENRES_100K = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
# ML-1M's age codes are the lower bounds of these buckets; ML-100K's exact ages are put in the same buckets.
AGE_BUCKETS = [1, 18, 25, 35, 45, 50, 56]


@dataclass
class SideTable:
    """Features of users or items keyed by raw id: dense columns, sparse columns (``|``-separated values)."""

    ids: np.ndarray
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    sparse: dict[str, np.ndarray] = field(default_factory=dict)
    titles: np.ndarray | None = None


@dataclass
class RawData:
    """Ratings in file order with raw ids; ``n_train`` > 0 when the files themselves fix the split.
    ``implicit`` data has interactions without ratings (each row counts as 1 on a 0-1 scale)."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    time: np.ndarray | None
    rating_range: tuple[float, float]
    users: SideTable | None = None
    items: SideTable | None = None
    release: str = ""
    n_train: int = 0
    implicit: bool = False
    context: RawContext = field(default_factory=RawContext)  # columns that vary per rating

    def __len__(self) -> int:
        return len(self.rating)


# Low-level table reading -------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None


def read_table(
    path: Path,
    *,
    sep: str,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    numeric: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
    dtype: dict[str, object] | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a delimited file. Returns the frame and the file line of each of its rows (for error messages).

    ``names`` given: the file has no header. Otherwise the first line is the header and ``required``
    columns must be in it. ``numeric`` columns must hold finite numbers on every row.
    """
    raw = _read_bytes(path)
    if not raw.strip():
        raise DataError(f"{path} is empty")
    if len(sep) > 1:  # pandas' fast parser takes one-character separators only
        if b"\t" in raw:
            raise DataError(f"{path}: expected fields separated by {sep!r}, found tabs")
        raw, sep = raw.replace(sep.encode(), b"\t"), "\t"
    first_line = 1 if names is not None else 2
    frame = _parse(raw, path, sep=sep, names=names, encoding=encoding, dtype=dtype)
    if names is None:
        header = [str(column) for column in frame.columns]
        repeated = [column for column in header if header.count(column) > 1 or _mangled(column, header)]
        if repeated:
            name = repeated[0].rsplit(".", 1)[0] if _mangled(repeated[0], header) else repeated[0]
            raise DataError(f"{path}: line 1: column {name!r} appears more than once in the header")
    missing = [column for column in required if column not in frame.columns]
    if missing:
        have = ", ".join(map(str, frame.columns))
        raise DataError(f"{path}: no column named {missing[0]!r} (columns: {have})")
    blank = frame.isna().all(axis=1).to_numpy()
    if blank.any():
        frame = frame[~blank]
    lines = np.flatnonzero(~blank) + first_line
    if sep == "," and b'"' in raw:  # a quoted field may hold line breaks: count lines as the parser did
        records = _record_lines(raw, encoding)[first_line - 1 :]
        if len(records) == len(blank):
            lines = records[~blank]
    for column in numeric:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            at = int(np.argmax(bad))
            shown = frame[column].iloc[at]
            raise DataError(f"{path}: line {lines[at]}: {column} is {_shown(shown)}, not a finite number")
        frame[column] = values
    for column in required:
        bad = frame[column].isna().to_numpy()
        if bad.any():
            raise DataError(f"{path}: line {lines[int(np.argmax(bad))]}: {column} is missing")
    if len(frame) == 0:
        raise DataError(f"{path} has a header but no rows")
    return frame, lines


def _parse(
    raw: bytes, path: Path, *, sep: str, names: list[str] | None, encoding: str, dtype: dict[str, object] | None
) -> pd.DataFrame:
    """``raw`` through pandas' C parser (``names`` given: no header row); its failures as ``DataError``."""
    try:
        return pd.read_csv(
            io.BytesIO(raw),
            sep=sep,
            header=None if names is not None else 0,
            names=names,
            encoding=encoding,
            dtype=dtype,
            skip_blank_lines=False,
            engine="c",
            quoting=3 if sep != "," else 0,  # QUOTE_NONE except in real CSV
            keep_default_na=False,
            na_values=[""],
        )
    except pd.errors.ParserError as error:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
        if match:
            expected, line, saw = match.groups()
            raise DataError(f"{path}: line {line}: expected {expected} fields, found {saw}") from None
        raise DataError(f"{path}: cannot parse: {str(error).strip().splitlines()[-1]}") from None
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: line {_undecodable_line(raw, encoding)}: not {encoding} text ({error.reason})"
        ) from None
    except (ValueError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{path}: cannot parse: {error}") from None


def _undecodable_line(raw: bytes, encoding: str) -> int:
    """The line of the first byte that ``encoding`` cannot decode."""
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as error:
        return raw.count(b"\n", 0, error.start) + 1
    return 1


def _mangled(column: str, header: list[str]) -> bool:
    """pandas renames a repeated header name ``x`` to ``x.1``, ``x.2``: is ``column`` such a rename?"""
    base, dot, suffix = column.rpartition(".")
    return bool(dot) and suffix.isdigit() and base in header


def _record_lines(raw: bytes, encoding: str) -> np.ndarray:
    """The line on which each CSV record starts (header included), for files whose quoted fields may span
    lines. Slower than counting line breaks, so used only when the file has quotes."""
    import csv

    reader = csv.reader(io.StringIO(raw.decode(encoding), newline=""))
    starts, previous = [], 0
    for _ in reader:
        starts.append(previous + 1)
        previous = reader.line_num
    return np.asarray(starts, dtype=np.int64)


def _shown(value: object) -> str:
    return "empty" if value is None or (isinstance(value, float) and np.isnan(value)) else repr(str(value))


def _ids(series: pd.Series) -> np.ndarray:
    """Raw ids as int64 where every id is an integer, else as strings. Spaces around an id are not part
    of it, here as on the command line (``--user " 42"`` is user 42)."""
    if pd.api.types.is_integer_dtype(series):
        return series.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(series):
        values = series.to_numpy()
        if np.all(values == np.round(values)):
            return values.astype(np.int64)
    text = series.astype(str).str.strip()
    as_int = pd.to_numeric(text, errors="coerce", downcast=None)
    if as_int.notna().all() and text.str.fullmatch(r"[+-]?\d+").all():
        return as_int.to_numpy(dtype=np.int64)
    return text.to_numpy(dtype=str)


# The model computes in float32: a rating scale beyond this would overflow its squared errors.
MAX_RATING = 1e15


def check_range(
    path: Path,
    frame: pd.DataFrame,
    lines: np.ndarray,
    column: str,
    low: float,
    high: float,
    what: str | None = None,
) -> None:
    """Refuse a rating outside ``low``..``high``, naming its file and line; ``what`` names the range."""
    values = frame[column].to_numpy()
    bad = (values < low) | (values > high)
    if bad.any():
        at = int(np.argmax(bad))
        what = what or f"the declared range {low:g} to {high:g}"
        raise DataError(f"{path}: line {lines[at]}: rating {values[at]:g} is outside {what}")


# MovieLens -----------------------------------------------------------------------------------------


def _year_from_titles(titles: np.ndarray) -> np.ndarray:
    years = pd.Series(titles).str.extract(r"\((\d{4})\)\s*$")[0]
    return pd.to_numeric(years, errors="coerce").to_numpy(dtype=np.float64)


def _age_bucket(ages: np.ndarray) -> np.ndarray:
    index = np.searchsorted(AGE_BUCKETS, ages, side="right") - 1
    return np.array([str(AGE_BUCKETS[max(i, 0)]) for i in index])


def _user_table(ids: np.ndarray, gender, age_code, occupation, zips) -> SideTable:
    zip_prefix = np.array([str(z)[:3] for z in zips])
    return SideTable(
        ids=ids,
        sparse={
            "gender": np.asarray(gender, dtype=str),
            "age": np.asarray(age_code, dtype=str),
            "occupation": np.asarray(occupation, dtype=str),
            "zip3": zip_prefix,
        },
    )


def _item_table(ids: np.ndarray, titles: np.ndarray, genres: np.ndarray) -> SideTable:
    return SideTable(
        ids=ids,
        dense={"release_year": _year_from_titles(titles)},
        sparse={"genres": np.asarray(genres, dtype=str)},
        titles=np.asarray(titles, dtype=str),
    )


def detect_movielens(folder: Path) -> str:
    if not folder.exists():
        raise DataError(f"{folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"movielens:{folder} must be a folder holding a MovieLens release")
    for name, release in (("u.data", "ml-100k"), ("ratings.dat", "ml-1m"), ("ratings.csv", "ml-csv")):
        if (folder / name).is_file():
            return release
    raise DataError(f"{folder} holds no MovieLens ratings (u.data, ratings.dat or ratings.csv)")


def _movielens_ratings(path: Path, release: str) -> tuple[pd.DataFrame, np.ndarray]:
    if release == "ml-100k":
        return read_table(path, sep="\t", names=["user", "item", "rating", "time"], numeric=("rating",))
    if release == "ml-1m":
        return read_table(path, sep="::", names=["user", "item", "rating", "time"], numeric=("rating",))
    frame, lines = read_table(path, sep=",", required=("userId", "movieId", "rating"), numeric=("rating",))
    return frame.rename(columns={"userId": "user", "movieId": "item", "timestamp": "time"}), lines


def rating_file_lines(
    folder: Path, kind: str, rating_files: list[Path], columns: CsvColumns | None
) -> list[tuple[Path, np.ndarray]]:
    """Each rating file of a source with the file line of each of its ratings, in the order ``RawData``
    holds them: for naming the line of a rating that is found wrong after parsing (e.g. by evaluate)."""
    if kind == "movielens":
        release = detect_movielens(folder)
        main = folder / {"ml-100k": "u.data", "ml-1m": "ratings.dat", "ml-csv": "ratings.csv"}[release]
        return [(path, _movielens_ratings(path, release)[1]) for path in rating_files or [main]]
    columns = columns or CsvColumns()
    return [(path, _csv_table(path, columns, implicit_csv(path, columns))[1]) for path in rating_files or [folder]]


def locate(files: list[tuple[Path, np.ndarray]], index: int) -> str:
    """``PATH: line N`` of the rating at ``index`` (counted over all the files, in order)."""
    for path, lines in files:
        if index < len(lines):
            return f"{path}: line {lines[index]}"
        index -= len(lines)
    raise IndexError(index)


def read_movielens(folder: Path, rating_files: list[Path] | None = None) -> RawData:
    """Read a GroupLens release; ``rating_files`` replaces its ratings file (for ``--split files:``)."""
    release = detect_movielens(folder)
    files = rating_files or [folder / {"ml-100k": "u.data", "ml-1m": "ratings.dat", "ml-csv": "ratings.csv"}[release]]
    frames = []
    for path in files:
        frame, lines = _movielens_ratings(path, release)
        for column in ("user", "item"):
            if frame[column].isna().any():
                at = int(np.argmax(frame[column].isna().to_numpy()))
                raise DataError(f"{path}: line {lines[at]}: {column} id is missing")
        frames.append((frame, lines))
    # Integer releases rate 1 to 5; ML-10M and the CSV releases have half stars from 0.5.
    half_stars = release == "ml-csv" or any(bool((f["rating"] % 1 != 0).any()) for f, _ in frames)
    low = 0.5 if half_stars else 1.0
    for path, (frame, lines) in zip(files, frames, strict=True):
        check_range(path, frame, lines, "rating", low, 5.0)
    frame = pd.concat([f for f, _ in frames], ignore_index=True)

    users = items = None
    if release == "ml-100k":
        if (folder / "u.user").is_file():
            names = ["id", "age", "gender", "occupation", "zip"]
            u, _ = read_table(folder / "u.user", sep="|", names=names, required=tuple(names))
            users = _user_table(_ids(u["id"]), u["gender"], _age_bucket(u["age"].to_numpy()), u["occupation"], u["zip"])
        if (folder / "u.item").is_file():
            names = ["id", "title", "date", "video", "url", *ML_GENRES_100K]
            it, _ = read_table(folder / "u.item", sep="|", names=names, encoding="latin-1")
            flags = it[ML_GENRES_100K].to_numpy(dtype=bool)
            genres = np.array(["|".join(g for g, on in zip(ML_GENRES_100K, row, strict=True) if on) for row in flags])
            items = _item_table(_ids(it["id"]), it["title"].astype(str).to_numpy(), genres)
    elif release == "ml-1m":
        if (folder / "users.dat").is_file():
            names = ["id", "gender", "age", "occupation", "zip"]
            u, _ = read_table(folder / "users.dat", sep="::", names=names, required=tuple(names))
            users = _user_table(_ids(u["id"]), u["gender"], u["age"], u["occupation"], u["zip"])
        if (folder / "movies.dat").is_file():
            it, _ = read_table(folder / "movies.dat", sep="::", names=["id", "title", "genres"], encoding="latin-1")
            items = _item_table(_ids(it["id"]), it["title"].astype(str).to_numpy(), it["genres"].fillna("").to_numpy())
    elif (folder / "movies.csv").is_file():
        it, _ = read_table(folder / "movies.csv", sep=",", required=("movieId", "title", "genres"))
        genres = it["genres"].fillna("").replace("(no genres listed)", "").to_numpy()
        items = _item_table(_ids(it["movieId"]), it["title"].astype(str).to_numpy(), genres)

    return RawData(
        user=_ids(frame["user"]),
        item=_ids(frame["item"]),
        rating=frame["rating"].to_numpy(dtype=np.float32),
        time=frame["time"].to_numpy(dtype=np.int64) if "time" in frame else None,
        rating_range=(low, 5.0),
        users=users,
        items=items,
        release=release,
        n_train=len(frames[0][0]) if rating_files and len(rating_files) == 2 else 0,
    )


# Generic CSV ---------------------------------------------------------------------------------------


def read_csv(path: Path, columns: CsvColumns) -> RawData:
    """Any interactions table with a header. Side columns must describe the user or the item of each row.
    Without a rating column (none named, and no column called ``rating``) the rows are implicit feedback:
    clicks, views or purchases, each an interaction."""
    user_column, item_column, rating_column = columns.user_column, columns.item_column, columns.rating_column
    implicit = implicit_csv(path, columns)
    named = _named_columns(columns, implicit)
    duplicated = sorted({c for c in named if named.count(c) > 1})
    if duplicated:
        raise DataError(f"column {duplicated[0]!r} is named for more than one role")
    if implicit and columns.rating_range:
        raise DataError(f"{path} has no rating column, so --rating-range has nothing to describe")
    frame, lines = _csv_table(path, columns, implicit)
    if implicit:
        values, low, high = np.ones(len(frame), dtype=np.float32), 0.0, 1.0
    else:
        values = frame[rating_column].to_numpy()
        limit = f"±{MAX_RATING:g}, the range dlrm's float32 arithmetic can train on"
        check_range(path, frame, lines, rating_column, -MAX_RATING, MAX_RATING, limit)
        low, high = columns.rating_range or (float(values.min()), float(values.max()))
        if columns.rating_range:
            check_range(path, frame, lines, rating_column, low, high)
        if high <= low:
            raise DataError(f"{path}: every rating is {low:g}; there is nothing to learn")
    user, item = _ids(frame[user_column]), _ids(frame[item_column])
    users, items = SideTable(ids=np.unique(user)), SideTable(ids=np.unique(item))
    context = RawContext()
    for column in (*columns.dense, *columns.sparse):
        owner = _owner(frame, column, columns)
        if owner is None:  # it describes the rating itself: a context column
            if column in columns.dense:
                context.dense[column] = frame[column].to_numpy(dtype=np.float64)
            else:
                context.sparse[column] = np.asarray(frame[column].to_numpy(), dtype=str)
            continue
        table, key = (users, user) if owner == "user" else (items, item)
        per_entity = pd.Series(frame[column].to_numpy()).groupby(key).first()
        aligned = per_entity.reindex(table.ids).to_numpy()
        if column in columns.dense:
            table.dense[column] = aligned.astype(np.float64)
        else:
            table.sparse[column] = np.asarray(aligned, dtype=str)
    if columns.title:
        items.titles = _titles(path, frame, columns, item, items.ids)
    return RawData(
        user=user,
        item=item,
        rating=values.astype(np.float32),
        time=frame[columns.time].to_numpy(dtype=np.int64) if columns.time else None,
        rating_range=(low, high),
        users=users,
        items=items,
        release="csv",
        implicit=implicit,
        context=context,
    )


def _named_columns(columns: CsvColumns, implicit: bool = False) -> list[str]:
    """Every column the options give a role, in role order (a column named twice appears twice)."""
    rating = [] if implicit else [columns.rating_column]
    return [columns.user_column, columns.item_column, *rating, *columns.dense, *columns.sparse,
            *([columns.time] if columns.time else []), *([columns.title] if columns.title else [])]  # fmt: skip


def _titles(path: Path, frame: pd.DataFrame, columns: CsvColumns, item: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each item's display name from the title column, in ``ids`` order ("" where no row gives one); the
    names an item's rows give must agree."""
    names = frame[columns.title].astype("string").str.strip().fillna("").to_numpy(dtype=str)
    given = names != ""
    per_item = pd.Series(names[given]).groupby(item[given])
    varies = per_item.nunique() > 1
    if varies.any():
        raise DataError(
            f"{path}: column {columns.title!r} (--title-col) varies within item {varies.idxmax()}; "
            "it must hold one display name per item"
        )
    return per_item.first().reindex(ids).fillna("").to_numpy(dtype=str)


def _csv_table(path: Path, columns: CsvColumns, implicit: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    named = _named_columns(columns, implicit)
    sep = "\t" if path.suffix in (".tsv", ".tab") else ","
    rating = () if implicit else (columns.rating_column,)
    numeric = (*rating, *columns.dense) + ((columns.time,) if columns.time else ())
    title = [columns.title] if columns.title else []  # may be blank on a row: the item then shows its id
    required = tuple(name for name in named if name not in title)
    frame, lines = read_table(
        path, sep=sep, required=required, numeric=numeric, dtype=dict.fromkeys([*columns.sparse, *title], str)
    )
    if title and title[0] not in frame.columns:
        raise DataError(f"{path}: no column named {title[0]!r} (columns: {', '.join(map(str, frame.columns))})")
    return frame, lines


def _owner(frame: pd.DataFrame, column: str, columns: CsvColumns) -> str | None:
    """Which entity a side column describes: the item if it is constant per item, else the user."""
    for owner, key in (("item", columns.item_column), ("user", columns.user_column)):
        if (frame.groupby(key, sort=False)[column].nunique(dropna=False) <= 1).all():
            return owner
    return None


def concat_for_files_split(parts: list[RawData]) -> RawData:
    """Training file then test file, as one table whose first ``n_train`` rows are the training rows."""
    train, test = parts
    if train.implicit != test.implicit:
        raise DataError("one file of the split has a rating column and the other has none; give both or neither")
    parts = [_with_context_of(part, other) for part, other in ((train, test), (test, train))]
    train, test = parts
    side = {}
    for kind in ("users", "items"):
        tables = [getattr(p, kind) for p in parts]
        merged = SideTable(ids=np.concatenate([t.ids for t in tables]))
        order = np.unique(merged.ids, return_index=True)[1]
        merged.ids = merged.ids[order]
        for name in tables[0].dense:
            merged.dense[name] = np.concatenate([t.dense[name] for t in tables])[order]
        for name in tables[0].sparse:
            merged.sparse[name] = np.concatenate([t.sparse[name] for t in tables])[order]
        if all(t.titles is not None for t in tables):
            merged.titles = np.concatenate([t.titles for t in tables])[order]
        side[kind] = merged
    low = min(train.rating_range[0], test.rating_range[0])
    high = max(train.rating_range[1], test.rating_range[1])
    context = RawContext()
    for kind in ("dense", "sparse"):
        for name in getattr(train.context, kind):
            parts_values = [getattr(p.context, kind)[name] for p in parts]
            getattr(context, kind)[name] = np.concatenate(parts_values)
    times = None if train.time is None else np.concatenate([train.time, test.time])
    return RawData(
        user=np.concatenate([train.user, test.user]),
        item=np.concatenate([train.item, test.item]),
        rating=np.concatenate([train.rating, test.rating]),
        time=times,
        rating_range=(low, high),
        implicit=train.implicit,
        context=context,
        users=side["users"],
        items=side["items"],
        release="csv",
        n_train=len(train),
    )


def _with_context_of(part: RawData, other: RawData) -> RawData:
    """``part`` with each column that is a context column in ``other`` read as one here too: a column that one
    file of a split (a small test file, say) happens to hold constant per user or per item describes the
    ratings if the other file's rows show that it does."""
    context = RawContext(dict(part.context.dense), dict(part.context.sparse))
    tables = {}
    for kind, ids in (("users", part.user), ("items", part.item)):
        table = getattr(part, kind)
        table = SideTable(table.ids, dict(table.dense), dict(table.sparse), table.titles)
        rows = np.searchsorted(table.ids, ids) if len(table.ids) else ids
        for group in ("dense", "sparse"):
            for name in [n for n in getattr(table, group) if n in getattr(other.context, group)]:
                getattr(context, group)[name] = getattr(table, group).pop(name)[rows]
        tables[kind] = table
    return replace(part, context=context, **tables)
