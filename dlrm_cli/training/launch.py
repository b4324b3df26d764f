"""``dlrm train --nproc-per-node N``: start N training processes through torchrun and report once.

The workers (``dlrm_cli.cli.worker``) receive the request as JSON: exactly the run this process resolved,
never a command line to parse again. A worker that fails leaves its message in a folder, and rank 0
leaves the run's result; this process raises the first failure (naming its rank) or returns the result,
instead of showing torchrun's multi-page report. A failure that is not dlrm's own error (a bug, a library's
error, a rank killed without a word) keeps its tracebacks and torchrun's whole output in a log file, which
the error names: ``dlrm-train-*.log`` in the temporary folder (``TMPDIR``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from dlrm_cli.errors import DlrmError, error_for_exit_code, signal_name
from dlrm_cli.runtime.threads import available_cpus
from dlrm_cli.training.request import TrainRequest
from dlrm_cli.training.run import TrainResult

WORKER = ("-m", "dlrm_cli.cli.worker")
RANK_PREFIX = re.compile(r"\[rank\d+\]: ?")  # torch's prefix for a rank's uncaught traceback
TRACEBACK_STARTS = ("Traceback (most recent call last)", "During handling of the above", "The above exception")
# Lines that torchrun and torch's C++ log print; the workers' own output passes through untouched.
NOISE = re.compile(
    r"[IWEF]\d{4} \d\d:\d\d:\d\d"  # torchrun's log (glog format)
    r"|\[[IWEF]\d{4} \d\d:\d\d:\d\d|\[[IWEF] \S+:\d+\]"  # c10's log, newer and older formats
    r"|\*{5,}\s*$|Setting OMP_NUM_THREADS|WARNING:torch\."
)


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
        with (workspace / "stderr.log").open("w") as raw:
            process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
            relay = threading.Thread(target=_relay, args=(_recorded(process.stderr, raw),), daemon=True)
            relay.start()
            try:
                code = process.wait()
            except KeyboardInterrupt:  # the workers got the signal too and are saving; wait for them
                code = process.wait()
            relay.join(timeout=5)
        if code == 0 and (workspace / "result.json").is_file():
            return TrainResult.from_dict(json.loads((workspace / "result.json").read_text()))
        raise _failure(workspace, code)


@dataclass(frozen=True)
class Report:
    """What a failed rank left in ``error-rankN`` (``dlrm_cli.cli.worker``)."""

    rank: int
    exit_code: int
    failed_ns: int  # when it failed (``time.time_ns()``), before it left the process group
    message: str

    @classmethod
    def read(cls, path: Path) -> Report | None:
        """The report in ``path``; None if its rank was killed while writing it."""
        try:
            code, failed, message = path.read_text().split("\t", 2)
            return cls(int(path.name.removeprefix("error-rank")), int(code), int(failed), message)
        except (OSError, ValueError):
            return None


def first_failure(reports: Iterable[Report]) -> Report | None:
    """The failure to show: the first (the others are its consequences: a peer's lost connection, torchrun
    stopping the other ranks); when that is an interrupt, the lowest rank's, which says what was saved."""
    reports = list(reports)
    if not reports:
        return None
    first = min(reports, key=lambda report: (report.failed_ns, report.rank))
    if first.exit_code > 128:
        return min((report for report in reports if report.exit_code > 128), key=lambda report: report.rank)
    return first


def _failure(workspace: Path, code: int) -> DlrmError:
    """The one error for a run whose torchrun exited with ``code`` without a result."""
    reports = [report for path in workspace.glob("error-rank*") if (report := Report.read(path)) is not None]
    reported = {report.rank for report in reports}
    output = (workspace / "stderr.log").read_text(errors="replace")
    # A rank that ended without a report (killed, crashed in C++) is the cause: the others' reports are
    # what its absence made of them. torchrun stops the ranks left with SIGTERM (Ctrl-C: SIGINT).
    silent = [(rank, end) for rank, end in _torchrun_failures(output) if rank not in reported and end not in (-2, -15)]
    report = first_failure(reports)
    if not silent and report is not None and not (workspace / f"traceback-rank{report.rank}").is_file():
        return error_for_exit_code(report.exit_code, report.message)  # dlrm's own error says it all
    log = _keep_log(workspace, output)
    if silent:
        rank, end = silent[0]
        how = f"killed by {signal_name(-end)}" if end < 0 else f"exit code {end}"
        return DlrmError(f"rank {rank} ended without a message ({how}); torchrun's report is in {log}")
    if report is not None:
        return error_for_exit_code(report.exit_code, f"{report.message} (traceback in {log})")
    return DlrmError(f"a training process exited abnormally (torchrun exit code {code}); its output is in {log}")


def _keep_log(workspace: Path, output: str) -> Path:
    """Keep the ranks' tracebacks and torchrun's whole ``output`` out of the workspace, which is removed."""
    parts = [f"rank {path.name.removeprefix('traceback-rank')}: {path.read_text()}"
             for path in sorted(workspace.glob("traceback-rank*"))]  # fmt: skip
    parts.append(f"torchrun and the workers' stderr:\n{output}")
    fd, name = tempfile.mkstemp(prefix="dlrm-train-", suffix=".log")
    with os.fdopen(fd, "w") as file:
        file.write("\n".join(parts))
    return Path(name)


def _torchrun_failures(output: str) -> list[tuple[int, int]]:
    """(rank, exit code) of each failure in torchrun's report, its root cause first; a negative exit code:
    killed by that signal."""
    failures, _, root = output.rpartition("Root Cause")
    pattern = re.compile(r"^\s*rank\s*:\s*(\d+).*\n\s*exitcode\s*:\s*(-?\d+)", re.M)
    return [(int(rank), int(end)) for text in (root, failures) for rank, end in pattern.findall(text)]


def _recorded(stream: Iterable[str], raw: TextIO) -> Iterator[str]:
    """The lines of ``stream``, each also written to ``raw``, which keeps what the relay leaves out."""
    for line in stream:
        with contextlib.suppress(ValueError):  # closed: the launcher has stopped waiting for this stream
            raw.write(line)
            raw.flush()
        yield line


class ChatterFilter:
    """Tells the workers' own lines from torchrun's chatter and from tracebacks, which are dropped whole,
    from their first line to the exception's, and followed by torchrun's framed report."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}  # per rank prefix (torch prefixes each line of a rank's traceback)

    def keep(self, line: str) -> bool:
        prefix = RANK_PREFIX.match(line)
        key = prefix.group(0) if prefix else ""
        text = line[prefix.end() :] if prefix else line
        state = self.state.get(key, "")
        if state == "framed":  # torchrun's report, between two lines of "="
            self.state[key] = "" if text.startswith("===") else "framed"
            return False
        if state == "traceback":
            if text.startswith((" ", "\t", *TRACEBACK_STARTS)) or not text.strip():
                return False
            self.state[key] = "after"  # the exception's own line ends it
            return False
        if text.startswith(TRACEBACK_STARTS):
            self.state[key] = "traceback"
            return False
        self.state[key] = ""
        if state == "after" and text.startswith("==="):
            self.state[key] = "framed"
            return False
        return bool(text.strip()) and NOISE.match(text) is None


def _relay(stream: Iterable[str]) -> None:
    """Copy the workers' stderr to ours, without torchrun's chatter or tracebacks."""
    lines = ChatterFilter()
    for line in stream:
        if lines.keep(line):
            sys.stderr.write(line)
            sys.stderr.flush()
