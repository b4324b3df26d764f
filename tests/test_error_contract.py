"""One error contract: what a user sees when a rank fails, when a write is interrupted or killed, when Ctrl-C
comes again as dlrm ends, and on the edges of the serving artifacts and `evaluate --k`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, dead_pid

ROOT = Path(__file__).resolve().parents[1]

# `dlrm ARGS` with the writing of a recommendations table held open once its bytes are out, until a
# signal comes: the test sees the temporary file and signals the process then.
HELD_WRITE = """
import sys, threading
import pandas
write = pandas.DataFrame.to_csv
def held(self, path, *args, **kwargs):
    write(self, path, *args, **kwargs)
    threading.Event().wait(600)
pandas.DataFrame.to_csv = held
from dlrm_cli.cli.main import main
main()
"""

# `dlrm ARGS` with a slow step in the interpreter's teardown, as some libraries have; it touches MARKER
# (the first argument) when it starts.
SLOW_TEARDOWN = """
import atexit, sys, threading
from pathlib import Path
marker = Path(sys.argv.pop(1))
def teardown():
    marker.touch()
    threading.Event().wait(60)
atexit.register(teardown)
from dlrm_cli.cli.main import main
main()
"""


def _dlrm_process(script: str, store: Path, *args: object, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        env={**os.environ, "DLRM_CHECKPOINT_DIR": str(store)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def _wait_for(condition, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _temporaries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if ".tmp" in path.name)


# The launcher's relay and its choice of the failure to show ---------------------------------------------

WORKER_LINES = [
    "Data: synthetic — 4,800 train ratings\n",
    "W1 and E1 are a worker's own words\n",
    "[rank plan] a line of the worker's\n",
    "=== a heading of the worker's\n",
    "epoch 1: train loss 0.48\n",
    "epoch 2: train loss 0.30\n",
]
RANK_TRACEBACK = [  # chained, each line with the rank's prefix
    "[rank1]: Traceback (most recent call last):\n",
    '[rank1]:   File "worker.py", line 7, in <module>\n',
    "[rank1]:     main()\n",
    "[rank1]: ValueError: boom\n",
    "[rank1]: \n",
    "[rank1]: During handling of the above exception, another exception occurred:\n",
    "[rank1]: \n",
    "[rank1]: Traceback (most recent call last):\n",
    '[rank1]:   File "worker.py", line 9, in <module>\n',
    "[rank1]: RuntimeError: again\n",
]
TORCHRUN_LOG = [
    "W1204 13:03:04.538000 5230 torch/distributed/elastic/api.py:1028] Sending process 5235 closing signal\n",
    "[W1204 13:03:04.000000000 socket.cpp:464] [c10d] a warning\n",
    "[rank0]:[W1204 13:03:04.000000000 ProcessGroupGloo.cpp:1] a warning\n",
    "[W socket.cpp:697] [c10d] an older warning\n",
    "E1204 13:03:04.554000 5230 torch/distributed/elastic/api.py:1002] failed (exitcode: 1) local_rank: 1\n",
]
TORCHRUN_REPORT = [
    "Traceback (most recent call last):\n",
    '  File "run.py", line 1032, in <module>\n',
    "    main()\n",
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n",
    "============================================================\n",
    "worker.py FAILED\n",
    "Root Cause (first observed failure):\n",
    "  rank      : 1 (local_rank: 1)\n",
    "============================================================\n",
]


def test_the_relay_passes_every_worker_line_and_nothing_else():
    from dlrm_cli.training.launch import ChatterFilter

    # the worker's lines, one in the middle of another rank's traceback, torchrun's log, and its report
    stream = [WORKER_LINES[0], *RANK_TRACEBACK[:2], WORKER_LINES[1], *RANK_TRACEBACK[2:], *WORKER_LINES[2:4]]
    stream += [*TORCHRUN_LOG, *WORKER_LINES[4:]]
    lines = ChatterFilter()
    assert [line for line in [*stream, *TORCHRUN_REPORT] if lines.keep(line)] == WORKER_LINES


def test_the_failure_shown_is_the_first_and_an_interrupt_is_rank_0s():
    from dlrm_cli.training.launch import Report, first_failure

    cause = Report(rank=1, exit_code=1, failed_ns=100, message="rank 1: ValueError: boom")
    lost_peer = Report(rank=0, exit_code=1, failed_ns=200, message="rank 0: RuntimeError: Connection closed")
    stopped = Report(rank=2, exit_code=143, failed_ns=300, message="interrupted by SIGTERM")
    assert first_failure([lost_peer, stopped, cause]) == cause
    saved = Report(rank=0, exit_code=130, failed_ns=500, message="interrupted by SIGINT; epoch 2 is saved")
    early = Report(rank=1, exit_code=130, failed_ns=400, message="interrupted by SIGINT")
    assert first_failure([early, saved]) == saved
    assert first_failure([]) is None


# Interrupted and killed writes ---------------------------------------------------------------------------


def test_stale_temporaries_of_an_output_go_and_nothing_else(tmp_path):
    from dlrm_cli.runtime.files import temporary_beside

    output = tmp_path / "model.v2.pt2"
    stale = [f".model.v2.0a1b2c3d-{dead_pid()}.tmp.pt2", ".model.v2.0a1b2c3d.tmp.pt2"]  # a killed writer's
    kept = [
        f".model.v2.0a1b2c3d-{os.getpid()}.tmp.pt2",  # a live writer's
        f".model.0a1b2c3d-{dead_pid()}.tmp.pt2",  # another output's
        f".model.v2.0a1b2c3d-{dead_pid()}.tmp.pt2.json",
        f".model.v2.pt2.0a1b2c3d-{dead_pid()}.tmp.json",
        ".model.v2.notes.tmp.pt2",
        "model.v2.pt2.bak",
        ".model.v2.0a1b2c3d-1x.tmp.pt2",
    ]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    fresh = temporary_beside(output)
    assert fresh.parent == tmp_path and fresh.name.startswith(".model.v2.") and fresh.name.endswith(".tmp.pt2")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(kept)


def test_an_interrupted_write_says_what_became_of_its_output(tmp_path):
    from dlrm_cli.errors import Interrupted, Signalled
    from dlrm_cli.runtime.files import interrupted_writes

    output = tmp_path / "recs.csv"

    def interrupted(write: bool = False) -> Interrupted:
        with pytest.raises(Interrupted) as stop, interrupted_writes(output):
            if write:  # as the writers do: a whole file renamed over the old one
                (tmp_path / "whole").write_text("new")
                os.replace(tmp_path / "whole", output)
            raise Signalled(signal.SIGTERM)
        assert stop.value.exit_code == 143
        return stop.value

    assert str(interrupted()) == f"interrupted by SIGTERM; nothing was written to {output}"
    output.write_text("old")
    assert str(interrupted()) == f"interrupted by SIGTERM; {output} is as it was"
    assert str(interrupted(write=True)) == f"interrupted by SIGTERM; {output} had been written"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "output"),
    [
        (["export"], "model.pt2"),
        (["recommend", "--all-users"], "recs.csv"),
    ],
)
def test_sigterm_while_writing_leaves_nothing_and_says_so(trained, tmp_path, command, output):
    folder = tmp_path / "out"
    folder.mkdir()
    process = _dlrm_process(HELD_WRITE, trained.store, *command, "--output", folder / output, cwd=tmp_path)
    _wait_for(lambda: _temporaries(folder), process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and "Recommending" not in line]
    assert lines == [f"Error: interrupted by SIGTERM; nothing was written to {folder / output}"], stderr
    assert list(folder.iterdir()) == []


@pytest.mark.slow
def test_a_write_killed_midway_is_cleared_by_the_next_one(trained, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    output = folder / "recs.csv"
    process = _dlrm_process(HELD_WRITE, trained.store, "recommend", "--all-users", "--output", output, cwd=tmp_path)
    _wait_for(lambda: _temporaries(folder), process)
    process.kill()
    process.communicate(timeout=60)
    assert len(_temporaries(folder)) == 1 and not output.exists()  # what SIGKILL leaves: a hidden partial file
    result = trained("recommend", "--all-users", "--output", output)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in folder.iterdir()) == ["notes.txt", "recs.csv"]
    assert (folder / "notes.txt").read_text() == "mine"


# A second Ctrl-C as dlrm ends ----------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_during_the_teardown_after_an_interrupt_is_quiet(tmp_path):
    store, marker = tmp_path / "store", tmp_path / "teardown"
    args = ["train", *TINY, "--epochs", "200", "--name", "run"]
    process = _dlrm_process(SLOW_TEARDOWN, store, marker, *args, cwd=tmp_path)
    _wait_for(lambda: (store / "run" / "meta.json").exists(), process)
    process.send_signal(signal.SIGINT)
    _wait_for(marker.exists, process)  # the error line is out and the interpreter is tearing down
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("Error: interrupted by SIGINT; epoch "), stderr
    assert lines[-1].endswith("Resume with: dlrm train --resume run"), stderr


# The serving artifacts on an empty batch --------------------------------------------------------------


@pytest.mark.slow
def test_every_artifact_answers_an_empty_batch_with_empty_outputs(trained, tmp_path):
    import torch
    import torchrec  # noqa: F401  (FBGEMM's int8 operators, for the int8 artifact)

    from dlrm_cli.serving.export import load_artifact

    empty = torch.empty(0, dtype=torch.int64)
    kinds = {"pt2": [], "torchscript": ["--format", "torchscript"], "int8": ["--quantize", "int8"]}
    for kind, options in kinds.items():
        output = tmp_path / f"{kind}.pt"
        result = trained("export", "--output", output, *options)
        assert result.exit_code == 0, result.output
        inputs = (empty, empty)
        if kind == "pt2":  # a pt2 program takes every input it was exported with: the context's too, empty
            context = json.loads(Path(f"{output}.json").read_text())["context"]
            dense = torch.empty(0, len(context["numeric"]["columns"]))
            rows = [torch.empty(0, 1, dtype=torch.int64) for _ in context["categorical"]]
            inputs = (empty, empty, dense, rows)
        ratings, user_known, item_known = load_artifact(output, "pt2" if kind == "pt2" else "torchscript")(*inputs)
        assert ratings.shape == user_known.shape == item_known.shape == (0,), kind
        assert ratings.dtype == torch.float32, kind
