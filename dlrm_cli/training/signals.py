"""Ctrl-C and SIGTERM during training: finish the current batch, save, and exit with 128 + the signal.

While a checkpoint is being saved, no signal interrupts it: pressing Ctrl-C twice there used to abort the
save and lose the epoch that had just finished. The save completes, then the run stops."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any


class StopOnSignal:
    """While active, the first SIGINT or SIGTERM is recorded instead of killing the process; the training
    loop polls ``requested()`` after each batch. A second signal of either kind stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._deferring = False

    def __enter__(self) -> StopOnSignal:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and not self._deferring:
            raise KeyboardInterrupt
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
