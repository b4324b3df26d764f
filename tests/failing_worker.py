"""dlrm's distributed worker with a failure injected on rank 1 as it sets up (tests/test_distributed.py).

``FAULT`` in the environment says which: ``dlrm`` (dlrm's own error, the default), ``bug`` (any other
exception) or ``kill`` (SIGKILL: the rank ends without a word)."""

import os
import signal
import sys

from dlrm_cli.cli import worker
from dlrm_cli.errors import DlrmError
from dlrm_cli.training.run import Faults

FAULT = os.environ.get("FAULT", "dlrm")


def fail_on_rank_1(parallel):
    if parallel.rank != 1:
        return
    if FAULT == "bug":
        raise ValueError("a bug injected on rank 1")
    if FAULT == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise DlrmError("failure injected on rank 1")


sys.exit(worker.main(sys.argv[1:], faults=Faults(on_setup=fail_on_rank_1)))
