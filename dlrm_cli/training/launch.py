"""``dlrm train --nproc-per-node N``: start N training processes through torchrun and report once.

The workers (``dlrm_cli.cli.worker``) receive the request as JSON: exactly the run this process resolved,
never a command line to parse again. A worker that fails leaves its message in a folder, and rank 0
leaves the run's result; this process raises the first failure (naming its rank) or returns the result,
instead of showing torchrun's multi-page report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from dlrm_cli.errors import DlrmError, error_for_exit_code
from dlrm_cli.runtime.threads import available_cpus
from dlrm_cli.training.request import TrainRequest
from dlrm_cli.training.run import TrainResult

WORKER = ("-m", "dlrm_cli.cli.worker")
# Lines that torchrun itself prints; the workers' own output passes through untouched.
NOISE = ("*****", "Setting OMP_NUM_THREADS", "[rank", "WARNING:torch", "W1", "E1", "I1", "[W", "[E", "[I")


def launch(request: TrainRequest, worker: Sequence[str] = WORKER) -> TrainResult:
    """Run ``request`` on ``request.processes`` local processes; ``worker`` is what torchrun starts in
    each (tests start a worker of their own that injects a failure)."""
    with tempfile.TemporaryDirectory(prefix="dlrm-launch-") as folder:
        workspace = Path(folder)
        (workspace / "request.json").write_text(json.dumps(request.to_dict()))
        threads = max(1, available_cpus() // request.processes)  # fixed: each rank keeps its share
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={request.processes}",
            *worker, str(workspace),
        ]  # fmt: skip
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        relay = threading.Thread(target=_relay, args=(process.stderr,), daemon=True)
        relay.start()
        try:
            code = process.wait()
        except KeyboardInterrupt:  # the workers got the signal too and are saving; wait for them
            code = process.wait()
        relay.join(timeout=5)
        reports = sorted(workspace.glob("error-rank*"), key=lambda path: int(path.name.removeprefix("error-rank")))
        if code == 0 and (workspace / "result.json").is_file():
            return TrainResult.from_dict(json.loads((workspace / "result.json").read_text()))
        if reports:
            exit_code, _, message = reports[0].read_text().partition("\t")
            raise error_for_exit_code(int(exit_code), message)
        raise DlrmError(f"a training process exited abnormally (torchrun exit code {code})")


def _relay(stream: TextIO) -> None:
    """Copy the workers' stderr to ours, without torchrun's chatter or tracebacks."""
    in_traceback = False
    for line in stream:
        if line.startswith("Traceback") or "torch.distributed.elastic" in line or line.startswith("==="):
            in_traceback = True
        if in_traceback or line.startswith(NOISE) or not line.strip():
            continue
        sys.stderr.write(line)
        sys.stderr.flush()
