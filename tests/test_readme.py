"""The README stays true: the defaults in its table of `dlrm train` options are the command's."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path

from typer.main import get_command

from dlrm_cli.cli.main import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _options_table() -> list[tuple[list[str], list[str]]]:
    """(options, defaults) of each row of the table under 'Main options', where both are listed."""
    text = README.read_text().split("Main options", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in text.splitlines()[2:]:
        options_cell, defaults_cell = line.split("|")[1:3]
        options = re.findall(r"`(--[\w-]+)", options_cell)
        defaults = [value.strip(" `") for value in re.findall(r"\s*(`[^`]*`|[^,]+)", defaults_cell) if value.strip()]
        if defaults:
            rows.append((options, defaults))
    return rows


def _same(shown: str, default: object) -> bool:
    if shown in ("on", "off"):
        return default is (shown == "on") or (shown == "off" and default is None)
    if isinstance(default, Enum):
        default = default.value
    try:
        return float(shown) == float(default)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return shown == str(default)


def test_readme_train_option_defaults_are_the_commands():
    params = {f"--{param.name.replace('_', '-')}": param.default for param in get_command(app).commands["train"].params}
    rows = _options_table()
    assert len(rows) >= 9
    for options, defaults in rows:
        assert len(options) == len(defaults), (options, defaults)
        for option, shown in zip(options, defaults, strict=True):
            assert _same(shown, params[option]), (option, shown, params[option])
