"""One rank of ``dlrm train --nproc-per-node N``, as torchrun starts it: ``python -m dlrm_cli.cli.worker DIR``.

``DIR/request.json`` holds the request (``dlrm_cli.training.request.TrainRequest``). Rank 0 shows progress and
writes ``DIR/result.json``; a rank that fails writes ``DIR/error-rankN`` (exit code, a tab, the message)
and exits with that code, for the launcher to report once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from dlrm_cli.cli import ui
from dlrm_cli.errors import DlrmError
from dlrm_cli.training.request import TrainRequest
from dlrm_cli.training.run import Faults, train


def main(argv: list[str], faults: Faults | None = None) -> int:
    workspace = Path(argv[0])
    request = TrainRequest.from_dict(json.loads((workspace / "request.json").read_text()))
    rank = os.environ.get("RANK", "0")
    try:
        with ui.RichProgress(ui.err(), show_plan=request.show_plan) as progress:
            result = train(request, observer=progress, faults=faults)
    except DlrmError as error:
        (workspace / f"error-rank{rank}").write_text(f"{error.exit_code}\t{error}")
        return error.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
        return 130
    if result is not None:
        (workspace / "result.json").write_text(json.dumps(result.to_dict()))
    return 0


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
    leave(main(sys.argv[1:]))
