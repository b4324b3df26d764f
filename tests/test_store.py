"""Nothing lost: resume, interruption, kills at any moment, checksums, foreign files, removal."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, Dlrm, assert_error, snapshot

from dlrm_cli.store import CheckpointStore, _meta_digest, sha256

ROOT = Path(__file__).resolve().parents[1]


def _train_process(store: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dlrm_cli", "train", *TINY, *args],
        env={**os.environ, "DLRM_CHECKPOINT_DIR": str(store), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _rewrite_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    meta["meta_sha256"] = _meta_digest(meta)
    (path / "meta.json").write_text(json.dumps(meta))


def _store_is_sound(store: Path) -> list[str]:
    """Every listed checkpoint is readable and loads; returns the names."""
    dlrm = Dlrm(store)
    listing = dlrm("checkpoints", "--json")
    assert listing.exit_code == 0, listing.output
    rows = json.loads(listing.stdout)["checkpoints"]
    assert all(row["problem"] is None for row in rows), rows
    for row in rows:
        result = dlrm("evaluate", "--checkpoint", row["name"], "--json")
        assert result.exit_code == 0, result.output
    assert not [p for p in store.iterdir() if p.name.startswith(".")] if store.exists() else True
    return [row["name"] for row in rows]


def test_resume_gives_the_same_weights_and_metrics_as_one_run(dlrm):
    assert dlrm("train", "--epochs", "2", "--name", "split", *TINY).exit_code == 0
    meta = json.loads((dlrm.store / "split" / "meta.json").read_text())
    assert meta["complete"] and meta["epochs_done"] == 2
    resumed = dlrm("train", "--resume", "split", "--epochs", "4")
    assert resumed.exit_code == 0, resumed.output
    assert dlrm("train", "--epochs", "4", "--name", "whole", *TINY).exit_code == 0
    a = torch.load(dlrm.store / "split" / "train_state.pt", weights_only=True)
    b = torch.load(dlrm.store / "whole" / "train_state.pt", weights_only=True)
    for key in b["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key])
    history_a = json.loads((dlrm.store / "split" / "meta.json").read_text())["history"]
    history_b = json.loads((dlrm.store / "whole" / "meta.json").read_text())["history"]
    assert [h["val_rmse"] for h in history_a] == pytest.approx([h["val_rmse"] for h in history_b])
    assert [h["train_loss"] for h in history_a] == pytest.approx([h["train_loss"] for h in history_b])


def test_resume_refuses_changed_settings_and_finished_runs(trained):
    assert_error(trained("train", "--resume", "tiny", "--lr", "0.1"), 2, "--lr cannot be changed on --resume")
    assert_error(trained("train", "--resume", "tiny", "--epochs", "2"), 1, "already finished its 2 epochs")
    assert_error(trained("train", "--resume", "nope"), 2, "no checkpoint named 'nope'")


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_saves_last_epoch_and_says_how_to_resume(tmp_path, sig, code, name):
    store = tmp_path / "store"
    process = _train_process(store, "--epochs", "200", "--name", "run")
    _wait_for(lambda: (store / "run" / "meta.json").exists())
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    lines = [line for line in stderr.strip().splitlines() if line.startswith("Error:")]
    assert lines[-1].startswith(f"Error: interrupted by {name}; epoch ")
    assert lines[-1].endswith("Resume with: dlrm train --resume run")
    meta = json.loads((store / "run" / "meta.json").read_text())
    assert meta["complete"] is False and meta["epochs_done"] >= 1
    assert _store_is_sound(store) == ["run"]
    resumed = Dlrm(store)("train", "--resume", "run", "--epochs", str(meta["epochs_done"] + 1))
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((store / "run" / "meta.json").read_text())["complete"] is True


@pytest.mark.parametrize("delay", [0.3, 1.5, "in-write"])
def test_sigkill_at_any_moment_leaves_a_sound_store(tmp_path, delay):
    store = tmp_path / "store"
    previous = Dlrm(store)("train", "--epochs", "1", "--name", "earlier", *TINY)
    assert previous.exit_code == 0
    env = {"DLRM_TEST_SLOW_SAVE": "5"} if delay == "in-write" else None
    process = _train_process(store, "--epochs", "50", "--name", "victim", env=env)
    if delay == "in-write":
        _wait_for(lambda: any(p.name.startswith(".tmp-") for p in store.iterdir()))
    else:
        time.sleep(delay)
    process.kill()
    process.wait(timeout=30)
    names = _store_is_sound(store)
    assert "earlier" in names
    assert set(names) <= {"earlier", "victim"}


def test_a_killed_swap_is_rolled_back(trained):
    # A writer killed between moving the old version aside and moving the new one in.
    store = trained.store
    os.rename(store / "tiny", store / ".replaced-tiny-999999999")
    assert _store_is_sound(store) == ["tiny"]


def test_two_trainings_into_one_store_both_land(tmp_path):
    store = tmp_path / "store"
    first, second = _train_process(store, "--epochs", "1"), _train_process(store, "--epochs", "1")
    assert first.wait(timeout=120) == 0 and second.wait(timeout=120) == 0
    names = _store_is_sound(store)
    assert len(names) == 2


def test_corrupt_checkpoints_are_refused(trained):
    path = trained.store / "tiny"
    (path / "model.pt").write_bytes((path / "model.pt").read_bytes()[:1000])
    assert_error(trained("evaluate"), 1, "checkpoint tiny is corrupt: model.pt does not match its recorded checksum")


def test_edited_meta_is_refused(trained):
    path = trained.store / "tiny" / "meta.json"
    path.write_text(path.read_text().replace('"complete": true', '"complete": false'))
    result = trained("evaluate", "--checkpoint", "tiny")
    assert_error(result, 1, "checkpoint tiny is corrupt: meta.json does not match its recorded checksum")


def test_foreign_folder_is_refused(trained):
    (trained.store / "stranger").mkdir()
    (trained.store / "stranger" / "meta.json").write_text('{"hello": 1}')
    assert_error(trained("evaluate", "--checkpoint", "stranger"), 1, "meta.json was not written by dlrm")
    listing = json.loads(trained("checkpoints", "--json").stdout)["checkpoints"]
    assert {row["name"]: row["problem"] for row in listing}["stranger"] == "meta.json was not written by dlrm"
    assert trained("evaluate").exit_code == 0  # latest still finds the good one


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/dlrm-exploit-ran")


def test_a_checkpoint_built_to_run_code_is_refused_without_running_it(trained):
    MARKER.unlink(missing_ok=True)
    path = trained.store / "tiny"
    (path / "model.pt").write_bytes(pickle.dumps({"weights": _Exploit()}))
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["model.pt"] = sha256(path / "model.pt")
    _rewrite_meta(path, files=meta["files"])
    assert_error(trained("evaluate"), 1, "checkpoint tiny is corrupt: model.pt cannot be loaded")
    assert not MARKER.exists()


def test_incompatible_version_is_refused_naming_both(trained):
    _rewrite_meta(trained.store / "tiny", format=99, dlrm_version="9.9.0")
    assert_error(
        trained("evaluate", "--checkpoint", "tiny"),
        1,
        "written by dlrm 9.9.0 in checkpoint format 99; this is dlrm 0.1.0, which reads format 1",
    )


def test_rm_and_prune_protect_latest_and_best(trained):
    for name in ("b", "c"):
        assert trained("train", "--epochs", "1", "--name", name, *TINY).exit_code == 0
    aliases = CheckpointStore(trained.store).aliases()
    assert aliases["latest"] == "c"
    before = snapshot(trained.store)
    assert_error(trained("checkpoints", "rm", "c"), 2, "checkpoint c is 'latest'; pass --force")
    assert_error(trained("checkpoints", "rm", "b", "nope"), 2, "no checkpoint named 'nope'")
    assert snapshot(trained.store) == before
    pruned = trained("checkpoints", "prune", "--keep", "0")
    assert pruned.exit_code == 0, pruned.output
    left = {p.name for p in trained.store.iterdir()}
    assert left == set(CheckpointStore(trained.store).aliases().values())
    assert "c" in left
    assert trained("checkpoints", "rm", "c", "--force").exit_code == 0
    assert not (trained.store / "c").exists()


def test_diverging_training_stops_with_epoch_and_batch(dlrm):
    result = dlrm("train", "--epochs", "3", "--lr", "1e30", "--sparse-lr", "1e30", *TINY)
    assert_error(result, 1, "training diverged: the loss became nan in epoch 1, batch", after_progress=True)


def test_show_prints_settings_and_history(trained):
    result = trained("checkpoints", "show", "tiny", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["options"]["epochs"] == 2 and doc["options"]["embedding_dim"] == 16
    assert len(doc["history"]) == 2
    assert "History" in trained("checkpoints", "show").stdout
