"""Where ratings come from. ``--data`` names a source as ``KIND[:PATH]``; every source yields a Dataset.

A source is described by a small dict (kind, path, split, seed, ...) that is saved in the checkpoint, so
that ``evaluate`` and ``export`` rebuild exactly the same splits later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlrm_cli.errors import DataError, DlrmUsageError

DATA_KINDS = ("synthetic", "movielens", "csv")
SIDE_FILES = ("u.user", "u.item", "users.dat", "movies.dat", "movies.csv")


def parse_data_option(
    text: str,
    *,
    split: str | None = None,
    seed: int = 0,
    validation: float = 0.05,
    columns: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn ``--data`` and its companions into a source description."""
    kind, _, path = text.partition(":")
    if kind not in DATA_KINDS:
        raise DlrmUsageError(f"--data must be synthetic, movielens:DIR or csv:FILE, got {text!r}")
    if columns and kind != "csv":
        raise DlrmUsageError("the CSV column options (--user-col, ...) apply only to --data csv:FILE")
    if kind == "synthetic":
        if path:
            raise DlrmUsageError("--data synthetic takes no path")
        if split is not None:
            raise DlrmUsageError("--split applies to movielens: and csv: data; synthetic data has fixed splits")
        return {"kind": "synthetic"}
    if not path:
        raise DlrmUsageError(f"--data {kind}: needs a path, as in {kind}:{'DIR' if kind == 'movielens' else 'FILE'}")
    from dlrm_cli.data.features import parse_split

    split = split or "random:0.1"
    split_kind, arg = parse_split(split)
    location = Path(path).expanduser().resolve()
    source: dict[str, Any] = {
        "kind": kind,
        "path": str(location),
        "split": split,
        "seed": seed,
        "validation": validation,
    }
    if split_kind == "files":
        base = location if kind == "movielens" else location.parent
        source["files"] = [str((base / name).resolve()) for name in arg]  # type: ignore[union-attr]
    if kind == "csv":
        source["columns"] = dict(columns or {})
    return source


def load_dataset(source: dict[str, Any]):  # -> Dataset; torch is imported here, not at the CLI's start
    """Build (or rebuild, from a checkpoint's record) the data set a source describes."""
    if source["kind"] == "synthetic":
        from dlrm_cli.data.synthetic import SyntheticSpec, generate

        fields = {key: value for key, value in source.items() if key != "kind"}
        try:
            spec = SyntheticSpec(**fields)
        except (TypeError, ValueError) as error:
            raise DlrmUsageError(str(error)) from None
        return generate(spec)
    from dlrm_cli.data.features import build_dataset

    raw, key = load_raw(source)
    if source.get("fingerprint") not in (None, key):
        raise DataError(
            f"the data at {source['path']} has changed since this checkpoint was trained; "
            "pass the data to compare with --data"
        )
    return build_dataset(
        raw, source["split"], int(source["seed"]), float(source["validation"]), {**source, "fingerprint": key}
    )


def load_raw(source: dict[str, Any]):  # -> tuple[RawData, str]
    """The parsed ratings of a movielens or csv source (from the cache when the files are unchanged)."""
    if source["kind"] not in DATA_KINDS or source["kind"] == "synthetic":
        raise DlrmUsageError(f"unknown data kind {source['kind']!r}")
    from dlrm_cli.data.cache import cached, fingerprint
    from dlrm_cli.data.readers import CsvColumns, detect_movielens, read_csv, read_movielens

    location = Path(source["path"])
    rating_files = [Path(f) for f in source.get("files", [])]
    for path in rating_files:
        if not path.is_file():
            raise DataError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if source["kind"] == "movielens":
        release = detect_movielens(location)
        main = {"ml-100k": "u.data", "ml-1m": "ratings.dat", "ml-csv": "ratings.csv"}[release]
        side_files = [location / name for name in SIDE_FILES if (location / name).is_file()]
        files = [*(rating_files or [location / main]), *side_files]

        def parse():
            return read_movielens(location, rating_files or None)

    else:
        if location.is_dir():
            raise DataError(f"csv:{location} is a folder; give the file")
        if not location.exists():
            raise DataError(f"{location} does not exist")
        raw_columns = dict(source.get("columns") or {})
        for key in ("dense", "sparse"):
            raw_columns[key] = tuple(raw_columns.get(key) or ())
        if raw_columns.get("rating_range") is not None:
            raw_columns["rating_range"] = tuple(raw_columns["rating_range"])
        columns = CsvColumns(**raw_columns)
        files = rating_files or [location]

        def parse():
            if rating_files:
                from dlrm_cli.data.readers import concat_for_files_split

                return concat_for_files_split([read_csv(path, columns) for path in rating_files])
            return read_csv(location, columns)

    try:
        key = fingerprint(files, {"kind": source["kind"], "columns": source.get("columns")})
    except OSError as error:
        raise DataError(f"cannot read {error.filename}: {error.strerror}") from None
    raw, _ = cached(key, parse)
    return raw, key
