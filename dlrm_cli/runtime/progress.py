"""Progress of a long step: the core reports it through a callback, the front end decides whether and how to
show it (``dlrm_cli.cli.tables.progress`` draws it with Rich). One rule says when it is shown: stderr is a
terminal and ``--json`` was not given."""

from __future__ import annotations

import sys
from typing import Protocol


class Progress(Protocol):
    """``progress(label, done, total)``: the step ``label`` has done ``done`` of ``total`` units (total 0: a
    step of unknown length, shown as a spinner). Labels are short and plain: ``Ranking users: DLRM``."""

    def __call__(self, label: str, done: int = 0, total: int = 0) -> None: ...


def silent(label: str, done: int = 0, total: int = 0) -> None:
    """The progress callback that shows nothing."""


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def progress_shown(json_output: bool = False) -> bool:
    """Whether a command shows its progress: only on a terminal, and never beside a ``--json`` document."""
    return not json_output and stderr_is_terminal()
