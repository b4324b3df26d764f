"""dlrm's distributed worker with a failure injected on rank 1 as it sets up (tests/test_distributed.py)."""

import sys

from dlrm_cli.cli import worker
from dlrm_cli.errors import DlrmError
from dlrm_cli.training.run import Faults


def fail_on_rank_1(parallel):
    if parallel.rank == 1:
        raise DlrmError("failure injected on rank 1")


sys.exit(worker.main(sys.argv[1:], faults=Faults(on_setup=fail_on_rank_1)))
