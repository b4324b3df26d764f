"""Ctrl-C and SIGTERM: during training, finish the current batch, save, and exit with 128 + the signal; in
the rest of a ``dlrm`` process, stop at once but let every clean-up run.

While a checkpoint is being saved, no signal interrupts it: pressing Ctrl-C twice there used to abort the
save and lose the epoch that had just finished. The save completes, then the run stops. Once a signal is
stopping the process, a further one never cuts a clean-up short nor prints a traceback after the error
line: it is ignored until that line is out, and then ends the process at once, quietly."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

from dlrm_cli.errors import Signalled

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Process:
    """What this process does with a signal outside training's batches (``install``)."""

    stopping = False  # a signal (or an error) is ending the process: later signals are ignored
    exit_code: int | None = None  # the error line is out: a later signal exits with this code at once


def install() -> None:
    """For a process of its own (the ``dlrm`` command, a torchrun worker): SIGINT and SIGTERM raise
    ``Signalled`` (the default SIGTERM would end the process without any clean-up)."""
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)


def stopping() -> None:
    """The process is ending (its error line comes next): ignore signals from now on."""
    _Process.stopping = True


def done(exit_code: int) -> None:
    """Everything is said: a signal from now on (during the interpreter's teardown) exits at once, quietly."""
    _Process.stopping = True
    _Process.exit_code = exit_code


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _Process.exit_code is not None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(_Process.exit_code)
    if _Process.stopping:
        return
    _Process.stopping = True
    raise Signalled(signum)


class StopOnSignal:
    """While active, the first SIGINT or SIGTERM is recorded instead of killing the process; the training
    loop polls ``requested()`` after each batch. A second signal of either kind stops at once."""

    SIGNALS = SIGNALS

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._deferring = False

    def __enter__(self) -> StopOnSignal:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None and self.received is not None:
            stopping()  # the run ends for that signal: the next must not interrupt what follows
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and not self._deferring:
            raise Signalled(signum)
        if self.received is None:
            self.received = signum

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Record signals without stopping until the block (a checkpoint save) has finished."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def requested(self) -> int | None:
        return self.received
