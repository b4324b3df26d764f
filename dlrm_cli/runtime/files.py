"""Files written outside the checkpoint store (exports, recommendation tables, reports): where they go and
the one rule that protects what is already there."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from dlrm_cli.errors import DlrmUsageError


def temporary_beside(path: Path) -> Path:
    """A hidden temporary name in ``path``'s folder, for writing a file and renaming it into place."""
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")


def sidecar_path(output: Path) -> Path:
    """Where an exported artifact's input description goes: ``OUTPUT.json`` beside it."""
    return output.with_name(output.name + ".json")


def output_path(path: Path | str, force: bool = False) -> Path:
    """A file to write outside the store, by dlrm's one rule for such writes: a file that exists is
    replaced only with ``--force`` (and then atomically, by the writer: temporary file + rename in the same
    folder); a symbolic link, a device or any other special file is never written, with or without it."""
    output = Path(path)
    try:
        mode = os.lstat(output).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as error:
        raise DlrmUsageError(f"--output {output} cannot be checked: {error.strerror}") from None
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise DlrmUsageError(f"--output {output} is a folder; give a file path")
        if stat.S_ISLNK(mode):
            raise DlrmUsageError(f"--output {output} is a symbolic link; dlrm does not write through links")
        if not stat.S_ISREG(mode):
            raise DlrmUsageError(f"--output {output} is a device or other special file; give a regular file path")
        if not force:
            raise DlrmUsageError(f"--output {output} already exists; pass --force to replace it")
    if not output.parent.is_dir():
        raise DlrmUsageError(f"--output folder {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK):
        raise DlrmUsageError(f"--output folder {output.parent} is not writable")
    return output
