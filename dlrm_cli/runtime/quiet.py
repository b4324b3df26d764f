"""Third-party libraries that speak to their own developers: silenced around the one call that does it,
never for the whole process, so that dlrm's own output stays readable and other warnings still show."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_library_logs() -> Iterator[None]:
    """Hide warnings and log records below ERROR while the block runs: TorchRec's planner and
    DistributedModelParallel give advice on every rank, torch deprecates the ShardedTensor that TorchRec's
    sharded tables still are, and TorchScript comments on the int8 model it compiles."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
