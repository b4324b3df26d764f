"""One rank of ``dlrm train --nproc-per-node N``, as torchrun starts it: ``python -m dlrm_cli.cli.worker DIR``.

``DIR/request.json`` holds the request (``dlrm_cli.training.request.TrainRequest``). Rank 0 shows progress and
writes ``DIR/result.json``. A rank that fails, with whatever exception, writes ``DIR/error-rankN`` (exit code,
the time it failed, the message, tab-separated; ``dlrm_cli.training.launch`` reports the first failure once)
and, for a failure that is not dlrm's own error, its traceback in ``DIR/traceback-rankN``; then it exits
with that code.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from dlrm_cli.cli import ui
from dlrm_cli.errors import OUT_OF_MEMORY, DlrmError, interrupt_code, signal_name
from dlrm_cli.training import distributed, signals
from dlrm_cli.training.request import TrainRequest
from dlrm_cli.training.run import Faults, train


def main(argv: list[str], faults: Faults | None = None) -> int:
    workspace = Path(argv[0])
    rank = os.environ.get("RANK", "0")
    try:
        request = TrainRequest.from_dict(json.loads((workspace / "request.json").read_text()))
        with ui.RichProgress(ui.err(), show_plan=request.show_plan) as progress:
            result = train(request, observer=progress, faults=faults)
    except DlrmError as error:
        return _report(workspace, rank, error.exit_code, str(error))
    except KeyboardInterrupt as stop:  # a second Ctrl-C, or a signal outside training's batches
        code = interrupt_code(stop)
        return _report(workspace, rank, code, f"interrupted by {signal_name(code - 128)}")
    except Exception as error:  # a bug or a library's failure: one line for the user, the traceback kept
        (workspace / f"traceback-rank{rank}").write_text(traceback.format_exc())
        what = OUT_OF_MEMORY if isinstance(error, MemoryError) else f"{type(error).__name__}: {error}"
        return _report(workspace, rank, 1, f"rank {rank}: {what}")
    if result is not None:
        (workspace / "result.json").write_text(json.dumps(result.to_dict()))
    return 0


def _report(workspace: Path, rank: str, code: int, message: str) -> int:
    signals.stopping()  # this rank is done: a signal now must not cut its report short
    failed = distributed.failed_at() or time.time_ns()  # before it left the group, which its peers then notice
    (workspace / f"error-rank{rank}").write_text(f"{code}\t{failed}\t{message}")
    return code


def leave(code: int) -> None:
    """Exit with ``code`` once the rank's work and files are done, without the interpreter's teardown.
    gloo's C++ threads can still be alive then, even after ``destroy_process_group``: a finished rank
    has aborted there ("terminate called without an active exception", once in this project's last eight
    suite runs; see pytorch/pytorch#190489), which turned a saved run into a failed one."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    signals.install()
    leave(main(sys.argv[1:]))
