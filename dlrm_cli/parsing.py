"""Parsing of option values that must not pull in torch (usage errors answer at once)."""

from __future__ import annotations

import os
from pathlib import Path

from dlrm_cli.errors import DlrmUsageError


def parse_id_list(text: str, option: str) -> list[str]:
    """``101,102,103`` -> ['101', '102', '103']; empty entries and repeats are usage errors."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise DlrmUsageError(f"{option} must be a comma-separated list of ids with no empty entries, got {text!r}")
    seen: set[str] = set()
    for part in parts:
        if part in seen:
            raise DlrmUsageError(f"{option} lists {part!r} more than once")
        seen.add(part)
    return parts


def parse_user(text: str) -> str:
    """A user id as typed: surrounding spaces dropped, empty refused."""
    user = text.strip()
    if not user:
        raise DlrmUsageError("--user must not be empty")
    return user


def output_path(path: Path | str) -> Path:
    """A file to write: not a folder, in a folder that exists and can be written."""
    output = Path(path)
    if output.is_dir():
        raise DlrmUsageError(f"--output {output} is a folder; give a file path")
    if not output.parent.is_dir():
        raise DlrmUsageError(f"--output folder {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK):
        raise DlrmUsageError(f"--output folder {output.parent} is not writable")
    return output
