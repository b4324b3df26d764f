"""The exceptions users can cause, and the one policy that maps them to exit codes.

Core code raises these; only the CLI layer (``dlrm_cli.cli.main``) turns them into one ``Error: ...`` line on
stderr and the exit code below. Nothing else prints errors or calls ``sys.exit``.

=====  ==========================================================================================
code   meaning, and the rule that decides it
=====  ==========================================================================================
2      ``DlrmUsageError``: the command asks for something that cannot work *as asked*, and changing
       the command line fixes it. A bad option value or combination, an unknown checkpoint, user or
       item, and a path the user named that cannot serve its purpose (a missing or unwritable
       output folder or checkpoint store, a store that is a file). Found before any work is done.
1      ``DlrmError``: the request was well formed, but the work failed: data that cannot be read or
       is malformed (named with file and line), a corrupt or incompatible checkpoint, a write that
       the operating system refused midway, a diverging run, a failing rank.
128+N  ``Interrupted``: training stopped by signal N (130 for Ctrl-C, 143 for SIGTERM) after saving
       the last completed epoch.
=====  ==========================================================================================
"""

from __future__ import annotations


class DlrmError(Exception):
    """A failure at run time (exit code 1): the inputs were well formed but the work could not be done."""

    exit_code = 1


class DlrmUsageError(DlrmError):
    """A bad option value, a combination of options that cannot work, or a named path that cannot serve
    (exit code 2)."""

    exit_code = 2


class CheckpointNotFound(DlrmUsageError):
    """The named checkpoint is not in the store."""


class CorruptCheckpoint(DlrmError):
    """A checkpoint whose files are damaged, altered, or not written by dlrm."""


class DataError(DlrmError):
    """Input data that cannot be read: missing, malformed or out of range."""


class DataChanged(DataError):
    """The files a checkpoint was trained on no longer match the fingerprint it recorded."""


class Interrupted(DlrmError):
    """Training stopped by SIGINT or SIGTERM; the last completed epoch is in the store (exit 128 + signal)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def error_for_exit_code(code: int, message: str) -> DlrmError:
    """The exception that reports ``message`` with exit code ``code`` (a worker process's failure, relayed)."""
    if code == DlrmUsageError.exit_code:
        return DlrmUsageError(message)
    if code > 128:
        return Interrupted(message, code)
    return DlrmError(message)
