"""Nothing lost: resume, interruption, kills at any moment, checksums, foreign files, removal."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, Dlrm, assert_error, snapshot

from dlrm_cli import CHECKPOINT_FORMAT
from dlrm_cli.store.checkpoints import CheckpointStore, _meta_digest, sha256

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


def _wait_for(condition, timeout: float = 120.0) -> None:
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


@pytest.mark.slow
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


class _Lines:
    """Reads a process's stderr in the background; ``wait_for`` returns once a line holds the text."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, args=(process.stderr,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: any(text in line for line in self.lines), timeout=timeout):
                raise AssertionError(f"no line with {text!r} in {timeout} s: {self.lines}")


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["first epoch", "tenth epoch"])
def test_sigkill_during_training_leaves_a_sound_store(tmp_path, moment):
    store = tmp_path / "store"
    assert Dlrm(store)("train", "--epochs", "1", "--name", "earlier", *TINY).exit_code == 0
    process = _train_process(store, "--epochs", "50", "--patience", "50", "--name", "victim")  # to epoch 10 at least
    _Lines(process).wait_for("epoch 1:" if moment == "first epoch" else "epoch 10:")
    process.kill()
    process.wait(timeout=30)
    names = _store_is_sound(store)
    assert "earlier" in names and set(names) <= {"earlier", "victim"}


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_write_leaves_a_sound_store(tmp_path):
    store = tmp_path / "store"
    assert Dlrm(store)("train", "--epochs", "1", "--name", "earlier", *TINY).exit_code == 0
    # A run whose every checkpoint write pauses before its folder is renamed into place (tests/fault_writer.py).
    writer = [sys.executable, str(ROOT / "tests" / "fault_writer.py"), str(store), "victim", "sleep", "60"]
    process = subprocess.Popen(writer, stderr=subprocess.DEVNULL, cwd=ROOT)
    _wait_for(lambda: any((path / "meta.json").exists() for path in store.glob(".tmp-*")))
    process.kill()
    process.wait(timeout=30)
    assert _store_is_sound(store) == ["earlier"]


def test_a_killed_swap_is_rolled_back(trained):
    # A writer killed between moving the old version aside and moving the new one in.
    store = trained.store
    os.rename(store / "tiny", store / ".replaced-tiny-999999999")
    assert _store_is_sound(store) == ["tiny"]


@pytest.mark.slow
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
        "written by dlrm 9.9.0 in checkpoint format 99; this is dlrm 0.4.0, which reads formats 1, 2, 3, 4, 5 and 6",
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
    assert doc["run"]["train"]["epochs"] == 2 and doc["run"]["train"]["embedding_dim"] == 16
    assert len(doc["history"]) == 2
    shown = trained("checkpoints", "show").stdout
    assert "History" in shown and "embedding_dim" in shown and "users" in shown


FORMAT1 = Path(__file__).parent / "data" / "format1"


def test_checkpoints_of_format_1_are_read_evaluated_and_resumed(tmp_path):
    """tests/data/format1 holds checkpoints written by dlrm 0.1.0, which kept train, options and data side
    by side; this version reads them as one run record."""
    store = tmp_path / "store"
    shutil.copytree(FORMAT1 / "store", store)
    data = tmp_path / "shop.csv"
    shutil.copy(FORMAT1 / "shop.csv", data)
    meta = json.loads((store / "format1-csv" / "meta.json").read_text())
    _rewrite_meta(store / "format1-csv", data={**meta["data"], "path": str(data)})  # it moved with the test
    dlrm = Dlrm(store)
    for name in ("format1", "format1-csv"):  # the csv one: the data's fingerprint must match as before
        result = dlrm("evaluate", "--checkpoint", name, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["count"] == 30
    predicted = dlrm("predict", "--checkpoint", "format1-csv", "--user", "c3", "--items", "sku-1,sku-2", "--json")
    assert predicted.exit_code == 0, predicted.output
    shown = json.loads(dlrm("checkpoints", "show", "format1-csv", "--json").stdout)
    assert shown["format"] == 1 and shown["run"]["data"]["columns"]["user"] == "customer"
    assert shown["run"]["train"]["checkpoint_every"] == 1 and "options" not in shown
    resumed = dlrm("train", "--resume", "format1", "--epochs", "3")
    assert resumed.exit_code == 0, resumed.output
    after = json.loads((store / "format1" / "meta.json").read_text())
    assert after["format"] == CHECKPOINT_FORMAT and after["epochs_done"] == 3 and after["run"]["train"]["epochs"] == 3
    # the same data, recorded as it was drawn: before the built-in data had context columns
    assert after["run"]["data"] == {**meta_of(FORMAT1 / "store" / "format1")["data"], "context": False}
    assert after["run"]["train"]["bags"] is False  # resumed as trained: without implicit-feedback bags


FORMAT2 = Path(__file__).parent / "data" / "format2"


def test_checkpoints_of_format_2_are_read_evaluated_and_resumed_without_bags(tmp_path):
    """tests/data/format2 holds a checkpoint written by dlrm 0.2.0, before the implicit-feedback bags: it
    scores as it did, and a resumed run goes on without bags (its model has no bag tables)."""
    store = tmp_path / "store"
    shutil.copytree(FORMAT2 / "store", store)
    dlrm = Dlrm(store)
    shown = json.loads(dlrm("checkpoints", "show", "format2", "--json").stdout)
    assert shown["format"] == 2 and shown["run"]["train"]["bags"] is False
    before = json.loads(dlrm("evaluate", "--checkpoint", "format2", "--json").stdout)
    assert before["count"] == 30
    resumed = dlrm("train", "--resume", "format2", "--epochs", "3")
    assert resumed.exit_code == 0, resumed.output
    after = meta_of(store / "format2")
    assert after["format"] == CHECKPOINT_FORMAT and after["epochs_done"] == 3 and after["run"]["train"]["bags"] is False
    assert "rated_items" not in after["features"]["sparse"]


FORMAT3 = Path(__file__).parent / "data" / "format3"


def test_checkpoints_of_format_3_are_read_ranked_and_resumed_as_rating_models(tmp_path):
    """tests/data/format3 holds a checkpoint written by dlrm 0.3.0 (one output; 4-column id biases; bags):
    it scores and recommends as dlrm 0.3.0 did, and a resumed run goes on as it was trained."""
    store = tmp_path / "store"
    shutil.copytree(FORMAT3 / "store", store)
    dlrm = Dlrm(store)
    before = json.loads(dlrm("evaluate", "--checkpoint", "format3", "--json").stdout)
    assert before["count"] == 30 and before["model"]["rmse"] == pytest.approx(0.685017, abs=1e-5)  # 0.3.0's
    recommended = json.loads(dlrm("recommend", "--checkpoint", "format3", "--user", "1", "--json").stdout)
    assert [entry["item"] for entry in recommended["items"]] == ["9", "7", "14", "3", "11", "1", "8", "5"]  # 0.3.0's
    resumed = dlrm("train", "--resume", "format3", "--epochs", "3")
    assert resumed.exit_code == 0, resumed.output
    after = meta_of(store / "format3")
    assert after["format"] == CHECKPOINT_FORMAT and after["epochs_done"] == 3 and after["model"]["heads"] == ["rating"]
    assert after["run"]["train"]["retrieval"] == "none" and "stages" not in after  # resumed in one stage
    assert after["run"]["train"]["objective"] == "rating" and "rated_items" in after["features"]["sparse"]


FORMAT4 = Path(__file__).parent / "data" / "format4"


def format4_store(tmp_path: Path) -> Dlrm:
    """A copy of tests/data/format4's store, its checkpoint pointed at a copy of its data, and a CLI over it."""
    store = tmp_path / "store"
    shutil.copytree(FORMAT4 / "store", store)
    data = tmp_path / "shop.csv"
    shutil.copy(FORMAT1 / "shop.csv", data)
    meta = meta_of(store / "format4")
    _rewrite_meta(store / "format4", run={**meta["run"], "data": {**meta["run"]["data"], "path": str(data)}})
    return Dlrm(store)


def test_checkpoints_of_format_4_recommend_in_one_stage_as_before(tmp_path):
    """tests/data/format4 holds a two-headed checkpoint written by dlrm 0.4.0 on CSV data, before two-stage
    models: it loads without a retrieval stage and recommends with its ranking head, as 0.4.0 did."""
    dlrm = format4_store(tmp_path)
    result = dlrm("recommend", "--checkpoint", "format4", "--user", "c1", "--json")
    assert result.exit_code == 0, result.output
    recommended = json.loads(result.stdout)
    assert [entry["item"] for entry in recommended["items"]] == ["sku-5", "sku-14", "sku-11", "sku-6"]  # 0.4.0's
    assert [entry["score"] for entry in recommended["items"]] == pytest.approx(
        [0.34398, 0.282446, 0.266752, 0.252877], abs=1e-5
    )
    shown = json.loads(dlrm("checkpoints", "show", "format4", "--json").stdout)
    assert shown["format"] == 4 and shown["run"]["train"]["retrieval"] == "none"


def meta_of(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


def test_prune_dry_run_lists_and_removes_nothing(trained):
    for name in ("b", "c"):
        assert trained("train", "--epochs", "1", "--name", name, *TINY).exit_code == 0
    before = snapshot(trained.store)
    result = trained("checkpoints", "prune", "--keep", "1", "--dry-run")
    assert result.exit_code == 0, result.output
    aliases = CheckpointStore(trained.store).aliases()
    would = {line.removeprefix("Would remove ") for line in result.stdout.splitlines()}
    assert would == {"tiny", "b"} - set(aliases.values())
    assert snapshot(trained.store) == before


def test_best_is_the_lowest_validation_rmse_among_runs_on_the_same_data(tmp_path):
    store = tmp_path / "store"
    dlrm = Dlrm(store)
    runs = {
        "one-epoch": ["--epochs", "1"],
        "three-epochs": ["--epochs", "3"],
        "high-lr": ["--epochs", "1", "--lr", "0.1"],
    }
    for name, args in runs.items():
        assert dlrm("train", "--name", name, *args, *TINY).exit_code == 0
    rmse = {name: meta_of(store / name)["metrics"]["validation"]["rmse"] for name in runs}
    aliases = CheckpointStore(store).aliases()
    assert aliases["latest"] == "high-lr" and aliases["best"] == min(rmse, key=rmse.get)
    # A run on other data is never 'best' for this data, even with a lower RMSE: 'best' follows 'latest'.
    assert dlrm("train", "--name", "other", "--epochs", "1", *TINY, "--noise", "0.01").exit_code == 0
    aliases = CheckpointStore(store).aliases()
    assert aliases == {"latest": "other", "best": "other"}


def _rewrite_record(folder: Path, later: float = 0.0, **validation: float) -> None:
    """Set validation figures (and the recorded one that chose the epoch) and move the date ``later``
    hours on, as a tool would: the checksum made anew."""
    from datetime import datetime, timedelta

    meta = meta_of(folder)
    meta["metrics"]["validation"].update(validation)
    selection = meta.get("selection")
    if selection is not None:
        selection["value"] = meta["metrics"]["validation"][{"RMSE": "rmse", "NDCG@10": "ndcg"}[selection["metric"]]]
    meta["created"] = (datetime.fromisoformat(meta["created"]) + timedelta(hours=later)).isoformat()
    _rewrite_meta(folder, **meta)


def test_best_follows_each_checkpoints_own_metric_and_latests_kind(trained):
    store = trained.store
    assert trained("train", "--name", "r1", "--objective", "ranking", "--epochs", "1", *TINY).exit_code == 0
    ndcg = meta_of(store / "r1")["metrics"]["validation"]["ndcg"]
    assert meta_of(store / "r1")["selection"] == {"metric": "NDCG@10", "value": ndcg, "higher_is_better": True}
    rmse = meta_of(store / "tiny")["metrics"]["validation"]["rmse"]
    assert meta_of(store / "tiny")["selection"] == {"metric": "RMSE", "value": rmse, "higher_is_better": False}
    for name, later, change in (("r2", 1, 0.05), ("r3", 2, -0.05)):  # the same run, its NDCG@10 higher, lower
        shutil.copytree(store / "r1", store / name)
        _rewrite_record(store / name, later, ndcg=ndcg + change)
    # latest is a ranking checkpoint: best is the highest NDCG@10 among them, never the rating one (which
    # alone has an RMSE).
    assert CheckpointStore(store).aliases() == {"latest": "r3", "best": "r2"}
    rows = {row["name"]: row for row in json.loads(trained("checkpoints", "--json").stdout)["checkpoints"]}
    assert rows["r2"]["selection"] == {
        "metric": "NDCG@10",
        "value": pytest.approx(ndcg + 0.05),
        "higher_is_better": True,
    }
    assert rows["tiny"]["selection"]["metric"] == "RMSE" and rows["r2"]["best"]
    table = trained("checkpoints").stdout
    assert f"val NDCG@10 {ndcg + 0.05:.4f}" in table and f"val RMSE {rmse:.4f}" in table
    # Written before dlrm recorded the metric: the same choice, inferred from the metrics.
    for name in ("tiny", "r1", "r2", "r3"):
        record = meta_of(store / name)
        del record["selection"]
        record["meta_sha256"] = _meta_digest(record)
        (store / name / "meta.json").write_text(json.dumps(record))
    assert CheckpointStore(store).aliases() == {"latest": "r3", "best": "r2"}
    # latest is a rating checkpoint again: best is the lowest RMSE among the rating ones.
    shutil.copytree(store / "tiny", store / "t2")
    _rewrite_record(store / "t2", 3, rmse=rmse + 0.1)
    assert CheckpointStore(store).aliases() == {"latest": "t2", "best": "tiny"}
