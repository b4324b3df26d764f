"""Hostile use: what a red-team pass found, each case with the behaviour that rules it out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, Dlrm, assert_error, snapshot, tiny_request

from dlrm_cli.errors import DlrmUsageError
from dlrm_cli.store import CheckpointStore
from dlrm_cli.training import train

ROOT = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# Two runs, one name --------------------------------------------------------------------------------


def test_a_name_is_claimed_by_one_live_process_at_a_time(tmp_path):
    store = CheckpointStore(tmp_path)
    store.claim("run")
    store.claim("run")  # again, by the same process: still ours
    assert store.holder("run") == os.getpid() and store.busy("run") is None
    os.replace(tmp_path / ".claim-run", tmp_path / ".mine")
    os.symlink(str(os.getppid()), tmp_path / ".claim-run")  # a live process holds it
    with pytest.raises(
        DlrmUsageError, match=f"checkpoint run is being written by another training run \\(process {os.getppid()}\\)"
    ):
        store.claim("run")
    assert store.busy("run") == os.getppid()
    store.release("run")  # not ours: left alone
    assert store.holder("run") == os.getppid()
    (tmp_path / ".claim-run").unlink()
    os.symlink(str(_dead_pid()), tmp_path / ".claim-run")  # its process was killed
    store.claim("run")
    assert store.holder("run") == os.getpid()
    store.release("run")
    assert not (tmp_path / ".claim-run").is_symlink()


def test_a_stale_claim_is_cleared_when_the_store_is_read(tmp_path):
    os.symlink(str(_dead_pid()), tmp_path / ".claim-gone")
    assert CheckpointStore(tmp_path).infos() == []
    assert not os.path.lexists(tmp_path / ".claim-gone")


def test_a_run_does_not_replace_a_checkpoint_that_appeared_after_it_was_prepared(tmp_path):
    store = tmp_path / "store"
    request = tiny_request(store, name="same", epochs=1)
    train(tiny_request(store, name="same", epochs=1))  # the other run got there first
    before = snapshot(store)
    with pytest.raises(DlrmUsageError, match="checkpoint same already exists"):
        train(request)  # prepared before the other run finished: it must not swap over it
    assert snapshot(store) == before


@pytest.mark.slow
def test_two_runs_started_together_with_one_name_one_wins_and_the_other_exits_2(tmp_path):
    store = tmp_path / "store"
    command = [sys.executable, "-m", "dlrm_cli", "train", *TINY, "--epochs", "2", "--name", "same"]
    env = {**os.environ, "DLRM_CHECKPOINT_DIR": str(store)}
    runs = [
        subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outcomes = sorted((run.wait(), run.stderr.read()) for run in runs)
    (won, _), (lost, error) = outcomes
    assert (won, lost) == (0, 2), outcomes
    lines = [line for line in error.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: checkpoint same "), error
    assert "being written by another training run" in lines[0] or "already exists" in lines[0]
    listing = json.loads(Dlrm(store)("checkpoints", "--json").stdout)["checkpoints"]
    assert [(row["name"], row["complete"], row["problem"]) for row in listing] == [("same", True, None)]
    assert not [path.name for path in store.iterdir() if path.name.startswith(".")]


def test_a_checkpoint_in_training_cannot_be_removed_or_pruned(trained):
    os.symlink(str(os.getppid()), trained.store / ".claim-tiny")  # as a live run holds it
    assert_error(
        trained("checkpoints", "rm", "tiny", "--force"),
        2,
        f"checkpoint tiny is being trained by process {os.getppid()}; stop that run before removing it",
    )
    pruned = trained("checkpoints", "prune", "--keep", "0", "--force")
    assert pruned.exit_code == 0, pruned.output
    assert "Kept tiny (training): a run is training it" in pruned.stderr
    assert (trained.store / "tiny" / "meta.json").is_file()


# Writes outside the store ----------------------------------------------------------------------------


def test_export_refuses_an_existing_file_unless_forced_and_then_replaces_it_whole(trained, tmp_path):
    output = tmp_path / "model.pt"
    output.write_bytes(b"the user's own file")
    assert_error(
        trained("export", "--output", output), 2, f"--output {output} already exists; pass --force to replace it"
    )
    assert output.read_bytes() == b"the user's own file"
    sidecar = tmp_path / "model.pt.json"
    output.unlink()
    sidecar.write_text("{}")  # the description's name is taken: refused as well, before any work
    assert_error(trained("export", "--output", output), 2, f"--output {sidecar} already exists")
    assert not output.exists() and sidecar.read_text() == "{}"
    result = trained("export", "--output", output, "--force", "--json")
    assert result.exit_code == 0, result.output
    assert output.stat().st_size > 1000 and json.loads(sidecar.read_text())["checkpoint"] == "tiny"
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_export_never_writes_through_a_link_or_into_a_special_file(trained, tmp_path, force):
    target = tmp_path / "elsewhere.pt"
    target.write_bytes(b"not to be touched")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    assert_error(trained("export", "--output", link, *force), 2, f"--output {link} is a symbolic link")
    assert link.is_symlink() and target.read_bytes() == b"not to be touched"
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    assert_error(trained("export", "--output", fifo, *force), 2, "is a device or other special file")
    assert_error(trained("export", "--output", "/dev/null", *force), 2, "--output /dev/null is a device")
    assert not os.path.lexists("/dev/null.json")


def test_report_follows_the_same_rule(trained, tmp_path):
    pytest.importorskip("matplotlib")
    output = tmp_path / "report.html"
    output.write_text("mine")
    assert_error(trained("report", "--output", output), 2, "already exists; pass --force to replace it")
    assert output.read_text() == "mine"
    result = trained("report", "--output", output, "--force")
    assert result.exit_code == 0, result.output
    assert output.read_text().startswith("<!doctype html>")


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 truncated zip", b"\x93NUMPY garbage"])
def test_a_damaged_parse_cache_entry_is_parsed_again(dlrm, tmp_path, private_cache, damage):
    from fixtures import write_ml1m

    folder = write_ml1m(tmp_path / "ml")
    args = ["--data", f"movielens:{folder}", "--epochs", "1", "--embedding-dim", "8"]
    assert dlrm("train", *args, "--name", "first").exit_code == 0
    [entry] = list(private_cache.glob("*.npz"))
    entry.write_bytes(damage)
    result = dlrm("train", *args, "--name", "second")
    assert result.exit_code == 0, result.output
    assert entry.stat().st_size > 1000  # parsed again and replaced


# Ctrl-C twice while a checkpoint is written ------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_twice_during_a_save_keeps_the_epoch_and_says_so(tmp_path):
    store = tmp_path / "store"
    writer = [sys.executable, str(ROOT / "tests" / "fault_writer.py"), str(store), "run", "interrupt", "2"]
    process = subprocess.run(writer, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 130, process.stderr
    lines = [line for line in process.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("Error: interrupted by SIGINT; epoch 2 is saved as run (incomplete)"), process.stderr
    meta = json.loads((store / "run" / "meta.json").read_text())
    assert (meta["epochs_done"], meta["complete"]) == (2, False)
    assert not [path.name for path in store.iterdir() if path.name.startswith(".")]


# Store operations on a store that cannot be written ---------------------------------------------------


def test_rm_and_prune_on_a_store_that_cannot_be_written_say_so_in_one_line(trained, monkeypatch):
    from dlrm_cli import store as store_module

    assert trained("train", "--epochs", "1", "--name", "second", *TINY).exit_code == 0
    before = snapshot(trained.store)

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store_module.os, "rename", refuse)  # as on a read-only store (root ignores modes)
    message = f"cannot remove checkpoint tiny from {trained.store}: Permission denied"
    assert_error(trained("checkpoints", "rm", "tiny", "--force"), 2, message)
    assert_error(trained("checkpoints", "prune", "--keep", "1", "--force"), 2, message)
    assert snapshot(trained.store) == before
