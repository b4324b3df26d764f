"""Parsing of option values that must not pull in torch (usage errors answer at once)."""

from __future__ import annotations

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
