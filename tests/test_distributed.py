"""Two processes on one machine through torchrun and gloo: training, the plan, failures, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import TINY, Dlrm, tiny_request

pytestmark = pytest.mark.slow  # every test here starts torchrun and two training processes

ROOT = Path(__file__).resolve().parents[1]


def _dlrm(store: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 240):
    """``dlrm ARGS`` in a process of its own. Its stderr is what a user sees, with the launcher's filter
    applied; ``workers_stderr`` is the workers' stderr before that filter, where their tracebacks would be."""
    log = store.parent / "workers-stderr.log"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "raw_relay.py"), str(log), *args],
        env={**os.environ, "DLRM_CHECKPOINT_DIR": str(store), **(env or {})},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
    result.workers_stderr = log.read_text()  # type: ignore[attr-defined]
    return result


def test_two_processes_train_a_checkpoint_that_one_process_evaluates(tmp_path):
    store = tmp_path / "store"
    # Five epochs stop short of convergence, and two processes converge a little more slowly than one; a decay
    # every epoch brings both close to where they settle, so that their figures can be compared.
    decay = ("--lr-schedule", "step")
    two = _dlrm(
        store, "train", *TINY, *decay, "--epochs", "5", "--name", "two", "--nproc-per-node", "2", "--print-plan"
    )
    assert two.returncode == 0, two.stderr
    assert "Saved checkpoint two" in two.stdout
    for table in ("t_user_id", "t_item_id", "t_category"):  # the plan covers every table
        assert table in two.stderr
    assert "epoch 5: train loss" in two.workers_stderr  # the workers' own stream, before the launcher's filter
    assert "Traceback" not in two.workers_stderr, two.workers_stderr  # and no rank printed a traceback there
    one = Dlrm(store)("train", *TINY, *decay, "--epochs", "5", "--name", "one")
    assert one.exit_code == 0, one.output
    rmse = {}
    for name in ("two", "one"):
        result = Dlrm(store)("evaluate", "--checkpoint", name, "--json")
        assert result.exit_code == 0, result.output
        rmse[name] = json.loads(result.stdout)["model"]["rmse"]
    assert abs(rmse["two"] - rmse["one"]) / rmse["one"] < 0.05, rmse
    meta = json.loads((store / "two" / "meta.json").read_text())
    assert meta["complete"] and meta["processes"] == 2
    peaks = [meta["history"][-1][f"peak_gib_rank_{rank}"] for rank in (0, 1)]  # what each rank holds
    assert all(0.05 < peak < 64 for peak in peaks), peaks
    assert "peak memory by rank" in two.workers_stderr


def test_two_processes_train_both_heads_and_choose_by_the_whole_models_ranking(tmp_path):
    store = tmp_path / "store"
    two = _dlrm(
        store, "train", *TINY, "--epochs", "2", "--objective", "both", "--name", "both", "--nproc-per-node", "2"
    )
    assert two.returncode == 0, two.stderr
    assert "epoch 2: train loss" in two.workers_stderr and "Traceback" not in two.workers_stderr, two.workers_stderr
    meta = json.loads((store / "both" / "meta.json").read_text())
    assert meta["processes"] == 2 and [record["epoch"] for record in meta["history"]] == [1, 2]
    assert all("val_rmse" in record and "val_ndcg" in record for record in meta["history"])
    # rank 0 ranked the validation users with the whole model, gathered from both ranks' shards: the figure
    # it recorded is the one a single process gets from the checkpoint
    best = meta["history"][meta["best_epoch"] - 1]
    result = Dlrm(store)(
        "evaluate", "--checkpoint", "both", "--split", "validation", "--k", "10", "--no-baselines", "--json"
    )
    assert result.exit_code == 0, result.output
    ranking = json.loads(result.stdout)["ranking"]
    assert ranking["models"]["DLRM"]["@10"]["ndcg"] == pytest.approx(best["val_ndcg"], abs=1e-3)


def test_resume_with_a_different_number_of_processes(tmp_path):
    store = tmp_path / "store"
    first = _dlrm(store, "train", *TINY, "--epochs", "1", "--name", "grow", "--nproc-per-node", "2")
    assert first.returncode == 0, first.stderr
    resumed = Dlrm(store)("train", "--resume", "grow", "--epochs", "2")
    assert resumed.exit_code == 0, resumed.output
    meta = json.loads((store / "grow" / "meta.json").read_text())
    assert meta["epochs_done"] == 2 and meta["complete"]
    again = _dlrm(store, "train", "--resume", "grow", "--epochs", "3", "--nproc-per-node", "2")
    assert again.returncode == 0, again.stderr
    assert json.loads((store / "grow" / "meta.json").read_text())["epochs_done"] == 3


def test_a_failing_rank_ends_the_run_with_one_clear_error(tmp_path, capfd):
    from dlrm_cli.errors import DlrmError
    from dlrm_cli.training.launch import launch
    from dlrm_cli.training.request import prepare

    store = tmp_path / "store"
    request = prepare(replace(tiny_request(store, name=None), processes=2))
    # tests/failing_worker.py is dlrm's worker with a fault injected on rank 1 as it sets up.
    with pytest.raises(DlrmError) as failure:
        launch(request, worker=[str(ROOT / "tests" / "failing_worker.py")])
    assert failure.value.exit_code == 1
    assert str(failure.value) == "rank 1: failure injected on rank 1"
    stderr = capfd.readouterr().err
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert not store.exists() or not any(p for p in store.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize(
    ("fault", "said", "kept"),
    [
        ("bug", "rank 1: ValueError: a bug injected on rank 1 (traceback in ", "ValueError: a bug injected on rank 1"),
        ("kill", "rank 1 ended without a message (killed by SIGKILL); torchrun's report is in ", "exitcode  : -9"),
    ],
)
def test_a_rank_failing_another_way_is_one_line_naming_it_and_its_log(tmp_path, monkeypatch, capfd, fault, said, kept):
    import tempfile

    from dlrm_cli.errors import DlrmError
    from dlrm_cli.training.launch import launch
    from dlrm_cli.training.request import prepare

    monkeypatch.setenv("FAULT", fault)  # tests/failing_worker.py: how rank 1 fails
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the log goes
    request = prepare(replace(tiny_request(tmp_path / "store", name=None), processes=2))
    with pytest.raises(DlrmError) as failure:
        launch(request, worker=[str(ROOT / "tests" / "failing_worker.py")])
    message = str(failure.value)
    assert failure.value.exit_code == 1 and message.startswith(said), message
    log = Path(message.removeprefix(said).removesuffix(")"))
    assert log.parent == tmp_path and log.name.startswith("dlrm-train-"), message
    assert kept in log.read_text()
    stderr = capfd.readouterr().err
    assert "Traceback" not in stderr and "Error" not in stderr and "rank1" not in stderr, stderr


def test_ctrl_c_stops_every_rank_and_saves(tmp_path):
    store = tmp_path / "store"
    process = subprocess.Popen(
        [sys.executable, "-m", "dlrm_cli", "train", *TINY, "--epochs", "100", "--name", "sig", "--nproc-per-node", "2"],
        env={**os.environ, "DLRM_CHECKPOINT_DIR": str(store)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (store / "sig" / "meta.json").exists():
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group gets SIGINT
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].endswith("Resume with: dlrm train --resume sig"), stderr
    assert json.loads((store / "sig" / "meta.json").read_text())["complete"] is False
