"""Files written outside the checkpoint store (exports, recommendation tables, reports): where they go and
the one rule that protects what is already there."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from dlrm_cli.errors import DlrmUsageError, Interrupted, interrupt_code, signal_name


def temporary_beside(path: Path) -> Path:
    """A hidden temporary name in ``path``'s folder, for writing a file and renaming it into place:
    ``.STEM.HEX-PID.tmpSUFFIX``, with this process's id. The temporaries of ``path`` that processes which
    have ended left behind (killed while writing it) are removed first."""
    remove_stale_temporaries(path)
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}-{os.getpid()}.tmp{path.suffix}")


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` (``temporary_beside``'s names, and its older names without a
    process id) whose process has ended; any other file is left alone. Returns what was removed."""
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.[0-9a-f]{{8}}(?:-([0-9]+))?\.tmp{re.escape(path.suffix)}")
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            match = pattern.fullmatch(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            if match.group(1) is not None and _alive(int(match.group(1))):
                continue  # being written right now
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # another user's
    return True


@contextlib.contextmanager
def interrupted_writes(*outputs: Path) -> Iterator[None]:
    """Turn a Ctrl-C or SIGTERM in the block (a command that writes ``outputs``) into one line saying what
    became of them, with exit code 128 + the signal. The writers leave no temporary behind: they remove
    theirs as the interrupt passes."""
    before = [_identity(output) for output in outputs]
    try:
        yield
    except KeyboardInterrupt as stop:
        code = interrupt_code(stop)
        written = [str(out) for out, old in zip(outputs, before, strict=True) if _identity(out) != old]
        if written:
            said = f"{' and '.join(written)} had been written"
        elif any(old is not None for old in before):
            said = f"{outputs[0]} is as it was"
        else:
            said = f"nothing was written to {outputs[0]}"
        raise Interrupted(f"interrupted by {signal_name(code - 128)}; {said}", code) from None


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size


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
