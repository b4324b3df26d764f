"""``python tests/raw_relay.py LOG ARGS...``: dlrm with ARGS, its launcher's relay also copying every line of the
workers' stderr to the file LOG before filtering it (tests/test_distributed.py).

What dlrm shows is unchanged: the relay (``dlrm_cli.training.launch._relay``) still drops torchrun's chatter and
tracebacks from it. A test that needs to know that no worker printed a traceback reads LOG, which keeps them.
"""

import sys
from collections.abc import Iterable, Iterator

from dlrm_cli.cli.main import main
from dlrm_cli.training import launch

log = open(sys.argv.pop(1), "w")  # noqa: SIM115  (open until this process ends: the relay thread writes it)
relay = launch._relay


def _recorded(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        log.write(line)
        log.flush()
        yield line


launch._relay = lambda stream: relay(_recorded(stream))  # type: ignore[assignment,arg-type]
main()
