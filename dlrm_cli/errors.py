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
128+N  ``Interrupted``: stopped by signal N (130 for Ctrl-C, 143 for SIGTERM). Training first saves the
       last completed epoch; a file being written outside the store is left as it was.
=====  ==========================================================================================

A failure that is none of these (a bug, or a library's error) is not caught by the ``dlrm`` command and
shows Python's traceback (exit 1); on a torchrun worker it becomes one line naming the rank and the file
that keeps its traceback (``dlrm_cli.training.launch``). docs/promises.md has the whole table.
"""

from __future__ import annotations

import signal

OUT_OF_MEMORY = "out of memory: the data or model is too large for this machine; try smaller sizes"


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
    """Stopped by SIGINT or SIGTERM (exit 128 + signal); the message says what was kept."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Signalled(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where Python raises KeyboardInterrupt for Ctrl-C, so that every clean-up
    (``finally``) runs before the process ends with 128 + the signal (``dlrm_cli.training.signals``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum
        self.exit_code = 128 + signum


def signal_name(signum: int) -> str:
    """``SIGINT`` for 2: how messages name a signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def interrupt_code(stop: BaseException) -> int:
    """The exit code for a KeyboardInterrupt: 128 + its signal (Ctrl-C, 130, when it does not say)."""
    return getattr(stop, "exit_code", 128 + signal.SIGINT)


def error_for_exit_code(code: int, message: str) -> DlrmError:
    """The exception that reports ``message`` with exit code ``code`` (a worker process's failure, relayed)."""
    if code == DlrmUsageError.exit_code:
        return DlrmUsageError(message)
    if code > 128:
        return Interrupted(message, code)
    return DlrmError(message)
