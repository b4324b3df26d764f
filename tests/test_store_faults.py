"""Fault injection for every operation that writes: a full disk (``ENOSPC``) at each write call in turn, and
Ctrl-C pressed twice at each write call of a training run's saves.

The invariant after any fault: the command printed one line with a documented exit code (or, where the
fault hit a call whose failure is harmless, succeeded); the store lists; every checkpoint that was complete
before still loads and verifies; and nothing outside the store changed.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import signal
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import Dlrm, dead_pid, snapshot

# A run small enough to repeat once per write call: two epochs, so one save creates and one replaces.
QUICK = ["--users", "60", "--items", "40", "--ratings", "800", "--embedding-dim", "4", "--bottom-mlp", "8",
         "--top-mlp", "8", "--batch-size", "256"]  # fmt: skip


class Faults:
    """Counts the calls that write to disk and makes the ``at``-th one fail (or run ``action`` instead)."""

    CALLS = ((torch, "save"), (json, "dump"), (os, "fsync"), (os, "rename"), (os, "replace"), (os, "mkdir"),
             (os, "symlink"), (os, "unlink"), (pathlib.Path, "write_bytes"), (pathlib.Path, "write_text"))  # fmt: skip

    def __init__(self, at: int | None = None, action: Callable[[], None] | None = None, unlink: bool = True) -> None:
        self.at, self.action, self.calls = at, action, 0
        self.targets = [(owner, name) for owner, name in self.CALLS if unlink or name != "unlink"]

    @contextmanager
    def active(self, monkeypatch: pytest.MonkeyPatch):
        with monkeypatch.context() as patch:
            for owner, name in self.targets:
                patch.setattr(owner, name, self._wrap(getattr(owner, name)))
            yield self

    def _wrap(self, real: Callable) -> Callable:
        def call(*args, **kwargs):
            self.calls += 1
            if self.calls == self.at:
                if self.action is None:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.action()
            return real(*args, **kwargs)

        return call


def _one_line_or_success(result, codes: tuple[int, ...] = (1, 2)) -> None:
    assert isinstance(result.exception, SystemExit) or result.exception is None, repr(result.exception)
    if result.exit_code == 0:
        return
    assert result.exit_code in codes, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip() and line.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr


def _sound(dlrm: Dlrm, complete_before: dict[str, bytes]) -> list[str]:
    """The store lists without problems, and the checkpoints complete before the fault load and verify."""
    listing = dlrm("checkpoints", "--json")
    assert listing.exit_code == 0, listing.output
    rows = json.loads(listing.stdout)["checkpoints"]
    assert all(row["problem"] is None for row in rows), rows
    names = [row["name"] for row in rows]
    for name in {key.split("/")[0] for key in complete_before}:
        if name in names:
            assert dlrm("evaluate", "--checkpoint", name, "--json").exit_code == 0
    return names


def _no_leftovers_once_this_process_ends(store: Path, k: int) -> None:
    """What a failed clean-up leaves is hidden and carries this process's id; the next command (from
    another process) clears it. Here, with the id of an ended process, a listing must clear it."""
    from dlrm_cli.store.checkpoints import CheckpointStore

    _as_if_this_process_had_ended(store, k)
    CheckpointStore(store).infos()
    assert not [path.name for path in store.iterdir() if path.name.startswith(".")], k


def _as_if_this_process_had_ended(store: Path, k: int) -> None:
    """Give this process's hidden entries (temporary folders, a set-aside version, a claim) the id of a
    process that has ended, as they would have once it was killed."""
    dead = dead_pid()
    for path in store.iterdir():
        kind, _, rest = path.name[1:].partition("-")
        if path.name.startswith(".") and kind in ("tmp", "replaced", "trash", "claim"):
            assert rest.endswith(str(os.getpid())) or kind == "claim", (k, path.name)
            target = store / (f".{kind}-{rest.rpartition('-')[0]}-{dead}" if kind != "claim" else path.name)
            if kind == "claim":
                path.unlink()
                target.symlink_to(str(dead))
            else:
                path.rename(target)


def _count(operation: Callable[[], object], monkeypatch, unlink: bool = True) -> int:
    faults = Faults(unlink=unlink)
    with faults.active(monkeypatch):
        operation()
    return faults.calls


@pytest.fixture
def base(tmp_path_factory) -> Path:
    """A store with one complete checkpoint, ``earlier``, trained before any fault."""
    store = tmp_path_factory.mktemp("faults") / "store"
    assert Dlrm(store)("train", *QUICK, "--epochs", "1", "--name", "earlier").exit_code == 0
    return store


def _fresh(base: Path, tmp_path: Path, k: int) -> Dlrm:
    import shutil

    store = tmp_path / f"store-{k}"
    shutil.copytree(base, store, symlinks=True)
    return Dlrm(store)


def _earlier(dlrm: Dlrm) -> dict[str, bytes]:
    return {key: value for key, value in snapshot(dlrm.store).items() if key.startswith("earlier/")}


@pytest.mark.slow
def test_a_full_disk_at_each_write_of_a_training_run(base, tmp_path, monkeypatch):
    probe = _fresh(base, tmp_path, 0)
    calls = _count(lambda: probe("train", *QUICK, "--epochs", "2", "--name", "run"), monkeypatch)
    assert calls >= 15  # the claim, two saves of three tensor files and meta.json each, renames, flushes
    for k in range(1, calls + 1):
        dlrm = _fresh(base, tmp_path, k)
        before = _earlier(dlrm)
        with Faults(at=k).active(monkeypatch):
            result = dlrm("train", *QUICK, "--epochs", "2", "--name", "run")
        _one_line_or_success(result)
        names = _sound(dlrm, before)
        assert _earlier(dlrm) == before, f"fault at call {k} changed the earlier checkpoint"
        if result.exit_code == 0:
            assert "run" in names
        _no_leftovers_once_this_process_ends(dlrm.store, k)


class Killed(Exception):
    """Stands for SIGKILL: the store is frozen at that instant, and what the process does next is ignored."""


@pytest.mark.slow
def test_a_kill_at_each_write_of_a_training_run_leaves_a_sound_store(base, tmp_path, monkeypatch):
    import shutil

    probe = _fresh(base, tmp_path, 0)
    calls = _count(lambda: probe("train", *QUICK, "--epochs", "2", "--name", "run"), monkeypatch)
    for k in range(1, calls + 1):
        dlrm = _fresh(base, tmp_path, k)
        before = _earlier(dlrm)
        frozen = tmp_path / f"killed-{k}"

        def kill(store: Path = dlrm.store, frozen: Path = frozen) -> None:
            shutil.copytree(store, frozen, symlinks=True)  # what the disk holds when the process dies
            raise Killed

        with Faults(at=k, action=kill).active(monkeypatch):
            dlrm("train", *QUICK, "--epochs", "2", "--name", "run")
        _as_if_this_process_had_ended(frozen, k)
        after = Dlrm(frozen)
        names = _sound(after, before)
        assert _earlier(after) == before, k
        if "run" in names:  # a checkpoint the killed run left is whole
            assert after("evaluate", "--checkpoint", "run", "--json").exit_code == 0, k
        assert not [path.name for path in frozen.iterdir() if path.name.startswith(".")], k


@pytest.mark.slow
def test_ctrl_c_twice_at_each_write_of_a_save_keeps_the_epoch(base, tmp_path, monkeypatch):
    def twice() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    probe = _fresh(base, tmp_path, 0)
    calls = _count(lambda: probe("train", *QUICK, "--epochs", "3", "--name", "run"), monkeypatch)
    for k in range(1, calls + 1):
        dlrm = _fresh(base, tmp_path, k)
        with Faults(at=k, action=twice).active(monkeypatch):
            result = dlrm("train", *QUICK, "--epochs", "3", "--name", "run")
        assert result.exit_code in (0, 130), (k, result.exit_code, result.stderr)
        _sound(dlrm, _earlier(dlrm))
        if result.exit_code == 130 and "is saved as run" in result.stderr:
            meta = json.loads((dlrm.store / "run" / "meta.json").read_text())
            saved = int(re.search(r"epoch (\d+) is saved as run", result.stderr).group(1))
            assert meta["epochs_done"] == saved, (k, result.stderr)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["checkpoints", "rm", "earlier", "--force"],
        ["checkpoints", "prune", "--keep", "0", "--force"],
        ["train", "--resume", "earlier", "--epochs", "2"],
    ],
    ids=["rm", "prune", "resume"],
)
def test_a_full_disk_at_each_write_of_a_store_operation(base, tmp_path, monkeypatch, command):
    probe = _fresh(base, tmp_path, 0)
    calls = _count(lambda: probe(*command), monkeypatch)
    assert calls >= 1
    for k in range(1, calls + 1):
        dlrm = _fresh(base, tmp_path, k)
        with Faults(at=k).active(monkeypatch):
            result = dlrm(*command)
        _one_line_or_success(result)
        names = _sound(dlrm, {})
        if result.exit_code != 0:  # a failed operation leaves the checkpoint whole and loadable
            assert "earlier" in names
            assert dlrm("evaluate", "--checkpoint", "earlier", "--json").exit_code == 0


@pytest.mark.slow
def test_a_full_disk_at_each_write_of_an_export(base, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_bytes(b"the user's previous export")
    # Removing a file never fails for want of space: unlink is left alone here, so that the export's
    # temporary files can be cleared after each fault and checked for.
    probe = _fresh(base, tmp_path, 0)
    calls = _count(lambda: probe("export", "--output", tmp_path / "probe.pt"), monkeypatch, unlink=False)
    for k in range(1, calls + 1):
        dlrm = _fresh(base, tmp_path, k)
        with Faults(at=k, unlink=False).active(monkeypatch):
            result = dlrm("export", "--output", out / "model.pt", "--force")
        _one_line_or_success(result)
        files = sorted(path.name for path in out.iterdir())
        if result.exit_code == 0:
            assert files == ["model.pt", "model.pt.json"]
            (out / "model.pt").write_bytes(b"the user's previous export")
            (out / "model.pt.json").unlink()
        else:  # nothing outside the store changed: the old file is whole, no temporary file is left
            assert files == ["model.pt"], (k, files)
            assert (out / "model.pt").read_bytes() == b"the user's previous export"


def test_entries_that_are_links_or_files_are_listed_or_ignored_never_followed(base, tmp_path):
    dlrm = _fresh(base, tmp_path, 0)
    elsewhere = tmp_path / "elsewhere"
    (dlrm.store / "earlier").rename(elsewhere)
    (dlrm.store / "link").symlink_to(elsewhere)
    (dlrm.store / "stray.txt").write_text("not a checkpoint")
    listing = json.loads(dlrm("checkpoints", "--json").stdout)["checkpoints"]
    assert [(row["name"], row["problem"]) for row in listing] == [
        ("link", "a symbolic link; dlrm does not follow links inside the store (move the folder itself here)")
    ]
    result = dlrm("evaluate", "--checkpoint", "link")
    assert result.exit_code == 1 and "checkpoint link is corrupt: a symbolic link" in result.stderr
    assert dlrm("checkpoints", "rm", "link").exit_code == 0
    assert not os.path.lexists(dlrm.store / "link") and (elsewhere / "meta.json").is_file()
    assert (dlrm.store / "stray.txt").read_text() == "not a checkpoint"
