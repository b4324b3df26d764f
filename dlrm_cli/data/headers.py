"""What a table's header says about it, read without parsing the table (and without numpy or pandas)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from dlrm_cli.config import CsvColumns


def implicit_csv(path: Path, columns: CsvColumns) -> bool:
    """True for a table of interactions without ratings: no rating column was named, and its header has no
    column called ``rating``."""
    if columns.rating is not None:
        return False
    header = header_names(path)
    return header is not None and columns.rating_column not in header  # unreadable: read_table names the problem


def header_names(path: Path) -> list[str] | None:
    """The column names in a CSV (or TSV) file's first line; None when it cannot be read."""
    sep = "\t" if path.suffix in (".tsv", ".tab") else ","
    with contextlib.suppress(OSError, UnicodeDecodeError), path.open(encoding="utf-8") as file:
        return [name.strip().strip('"') for name in file.readline().rstrip("\r\n").split(sep)]
    return None
