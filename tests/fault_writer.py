"""Train the tiny run through the core API with a fault inside its checkpoint writes, just before the
finished folder is renamed into the store; it reports errors as the CLI does (one line, the exit code).

    python tests/fault_writer.py STORE NAME sleep SECONDS   # pause in every write (a test kills it there)
    python tests/fault_writer.py STORE NAME interrupt EPOCH # Ctrl-C twice during that epoch's write
"""

import os
import signal
import sys
import time
from pathlib import Path

from conftest import tiny_request

from dlrm_cli.errors import DlrmError
from dlrm_cli.training.run import Faults, train

store, name, fault, argument = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
writes = []


def before_publish(_folder: Path) -> None:
    writes.append(1)
    if fault == "sleep":
        time.sleep(argument)
    elif fault == "interrupt" and len(writes) == int(argument):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs between bytecodes: let it see the first before the second
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)


try:
    train(
        tiny_request(store, name=name, epochs=4 if fault == "interrupt" else 50),
        faults=Faults(before_publish=before_publish),
    )
except DlrmError as error:
    print(f"Error: {error}", file=sys.stderr)
    sys.exit(error.exit_code)
except KeyboardInterrupt:
    sys.exit(130)
