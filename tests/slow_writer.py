"""Train the tiny run through the core API, pausing inside every checkpoint write just before the finished
folder is renamed into the store, so that a test can kill the writer at that moment.

    python tests/slow_writer.py STORE NAME SECONDS
"""

import sys
import time
from pathlib import Path

from conftest import tiny_request

from dlrm_cli.training import Faults, train

store, name, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
train(tiny_request(store, name=name, epochs=50), faults=Faults(before_publish=lambda _folder: time.sleep(seconds)))
