"""Where ratings come from. ``--data`` names a source as ``KIND[:PATH]``; every source yields a Dataset.

A source is a ``DataSource`` (``dlrm_cli.config``): the built-in ``SyntheticSpec`` or a ``FileSource``.
It is saved in the checkpoint's run record, so that ``evaluate`` and ``export`` rebuild exactly the same
splits later.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dlrm_cli.config import DEFAULT_SPLIT, DEFAULT_VALIDATION, CsvColumns, DataSource, FileSource, SyntheticSpec
from dlrm_cli.data.headers import implicit_csv
from dlrm_cli.errors import DataChanged, DataError, DlrmUsageError

if TYPE_CHECKING:
    from dlrm_cli.data.catalog import Dataset
    from dlrm_cli.data.readers import RawData

DATA_KINDS = ("synthetic", "movielens", "csv")
SIDE_FILES = ("u.user", "u.item", "users.dat", "movies.dat", "movies.csv")


def parse_data_option(
    text: str,
    *,
    split: str | None = None,
    seed: int = 0,
    validation: float = DEFAULT_VALIDATION,
    columns: CsvColumns | None = None,
    synthetic: SyntheticSpec | None = None,
    time_features: tuple[str, ...] = (),
) -> DataSource:
    """Turn ``--data`` and its companions into a source. ``columns`` apply to csv data, ``synthetic``
    (the sizes of the built-in data) to synthetic data; either given for another kind is a usage error."""
    kind, _, path = text.partition(":")
    if kind not in DATA_KINDS:
        raise DlrmUsageError(f"--data must be synthetic, movielens:DIR or csv:FILE, got {text!r}")
    if columns is not None and kind != "csv":
        raise DlrmUsageError("the CSV column options (--user-col, ...) apply only to --data csv:FILE")
    if kind == "synthetic":
        if path:
            raise DlrmUsageError("--data synthetic takes no path")
        if time_features:
            raise DlrmUsageError("--time-features applies to movielens: and csv: data with timestamps")
        if split is not None:
            raise DlrmUsageError("--split applies to movielens: and csv: data; synthetic data has fixed splits")
        return replace(synthetic or SyntheticSpec(), seed=seed)
    if not path:
        raise DlrmUsageError(f"--data {kind}: needs a path, as in {kind}:{'DIR' if kind == 'movielens' else 'FILE'}")
    from dlrm_cli.data.features import parse_split

    split = split or DEFAULT_SPLIT
    split_kind, arg = parse_split(split)
    location = Path(path).expanduser().resolve()
    files: tuple[str, ...] = ()
    if split_kind == "files":
        base = location if kind == "movielens" else location.parent
        files = tuple(str((base / name).resolve()) for name in arg)  # type: ignore[union-attr]
    return FileSource(
        kind=kind,
        path=str(location),
        split=split,
        seed=seed,
        validation=validation,
        files=files,
        columns=(columns or CsvColumns()) if kind == "csv" else None,
        time_features=check_time_features(time_features),
    )


def without_ratings(source: DataSource) -> bool:
    """True for CSV data of interactions without ratings (``implicit_csv``), read from the header of its
    (first) file; False for every other source, and for a file that cannot be read (loading says why)."""
    if not isinstance(source, FileSource) or source.kind != "csv":
        return False
    path = Path(source.files[0] if source.files else source.path)
    return path.is_file() and implicit_csv(path, source.columns or CsvColumns())


def load_dataset(source: DataSource) -> Dataset:
    """Build (or rebuild, from a checkpoint's record) the data set a source describes; torch is imported
    here, not at the CLI's start."""
    if isinstance(source, SyntheticSpec):
        from dlrm_cli.data.synthetic import generate

        return generate(source)
    from dlrm_cli.data.features import build_dataset

    raw, key = load_raw(source)
    if source.fingerprint not in (None, key):
        raise DataChanged(
            f"the data at {source.path} has changed since this checkpoint was trained; "
            "evaluate on the new files with `dlrm evaluate --data`"
        )
    return build_dataset(raw, replace(source, fingerprint=key))


def load_raw(source: FileSource) -> tuple[RawData, str]:
    """The parsed ratings of a movielens or csv source (from the cache when the files are unchanged), and
    the key that identifies the files' contents."""
    from dlrm_cli.data.cache import cached, fingerprint
    from dlrm_cli.data.readers import detect_movielens, read_csv, read_movielens

    location = Path(source.path)
    rating_files = [Path(f) for f in source.files]
    for path in rating_files:
        if not path.is_file():
            raise DataError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if source.kind == "movielens":
        release = detect_movielens(location)
        main = {"ml-100k": "u.data", "ml-1m": "ratings.dat", "ml-csv": "ratings.csv"}[release]
        side_files = [location / name for name in SIDE_FILES if (location / name).is_file()]
        files = [*(rating_files or [location / main]), *side_files]

        def parse() -> RawData:
            return read_movielens(location, rating_files or None)

    else:
        if location.is_dir():
            raise DataError(f"csv:{location} is a folder; give the file")
        if not location.exists():
            raise DataError(f"{location} does not exist")
        columns = source.columns or CsvColumns()
        files = rating_files or [location]

        def parse() -> RawData:
            if rating_files:
                from dlrm_cli.data.readers import concat_for_files_split

                return concat_for_files_split([read_csv(path, columns) for path in rating_files])
            return read_csv(location, columns)

    try:
        key = fingerprint(files, source)
    except OSError as error:
        raise DataError(f"cannot read {error.filename}: {error.strerror}") from None
    raw, _ = cached(key, parse)
    return raw, key


TIME_FEATURES = {
    "year": "the rating's date, in years",
    "user_days": "days since the user's first training rating",
    "item_days": "days since the item's first training rating",
    "weekday": "the rating's day of the week (a category)",
    "hour": "the rating's hour, UTC (a category)",
    "user_day": "the user and the day together (a category: the user's mood that day)",
}


def check_time_features(names: tuple[str, ...]) -> tuple[str, ...]:
    """``--time-features``, checked: known names, each once (``none`` alone: none)."""
    if tuple(names) == ("none",):
        return ()
    for name in names:
        if name not in TIME_FEATURES:
            raise DlrmUsageError(f"unknown time feature {name!r}; choose from {', '.join(TIME_FEATURES)} (or none)")
    if len(set(names)) != len(names):
        raise DlrmUsageError("--time-features names a feature twice")
    return tuple(names)
