"""The exceptions users can cause. The CLI layer turns each into one line on stderr and an exit code."""


class DlrmError(Exception):
    """A failure at run time (exit code 1): the inputs were well formed but the work could not be done."""

    exit_code = 1


class DlrmUsageError(DlrmError):
    """A bad option value or a combination of options that cannot work (exit code 2)."""

    exit_code = 2


class CheckpointNotFound(DlrmUsageError):
    """The named checkpoint is not in the store."""


class CorruptCheckpoint(DlrmError):
    """A checkpoint whose files are damaged, altered, or not written by dlrm."""


class DataError(DlrmError):
    """Input data that cannot be read: missing, malformed or out of range."""
