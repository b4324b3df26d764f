"""Ctrl-C and SIGTERM during training: finish the current batch, save, and exit with 128 + the signal."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any


class StopOnSignal:
    """While active, the first SIGINT or SIGTERM is recorded instead of killing the process; the training
    loop polls ``requested()`` after each batch. A second signal of either kind stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def requested(self) -> int | None:
        return self.received
