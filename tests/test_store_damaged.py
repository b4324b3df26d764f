"""A checkpoint whose meta.json passes its checksum but not its own checks (edited by hand, rewritten by a
tool that recomputed the checksum) is damaged: listed as such, never an alias, never counted by prune, and
refused in one line by every command that would use it. The rest of the store works as before."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import assert_error, snapshot

from dlrm_cli import CHECKPOINT_FORMAT
from dlrm_cli.store.checkpoints import _meta_digest


def rewrite(folder: Path, edit: Callable[[dict], None]) -> None:
    """Change a record as a tool would: the checksum made anew, so that only the change itself shows."""
    meta = json.loads((folder / "meta.json").read_text())
    edit(meta)
    meta["meta_sha256"] = _meta_digest(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def copy(store: Path, source: str, name: str, later: timedelta) -> Path:
    """A copy of checkpoint ``source`` whose record says it was written ``later`` than the source."""
    shutil.copytree(store / source, store / name)

    def move(meta: dict) -> None:
        meta["created"] = (datetime.fromisoformat(meta["created"]) + later).isoformat()

    rewrite(store / name, move)
    return store / name


def _set(path: str, value: object) -> Callable[[dict], None]:
    """An edit that sets the field at the dotted ``path`` (``None``: deletes it)."""

    def edit(meta: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            meta = meta[key]
        if value is None:
            del meta[last]
        else:
            meta[last] = value

    return edit


DAMAGES = {
    "a date that is not one": (_set("created", "yesterday"), "'created' is 'yesterday', not a date"),
    "a date that is a number": (_set("created", 5), "'created' is 5, not a date"),
    "a history that is a number": (_set("history", 3), "'history' is 3, not a list"),
    "a format written as text": (_set("format", str(CHECKPOINT_FORMAT)), f"'format' is '{CHECKPOINT_FORMAT}', not a"),
    "metrics of the wrong shape": (_set("metrics.validation", [1]), "'metrics.validation' is not a table of numbers"),
    "no run record": (_set("run", None), "'run' is missing"),
    "no rating scale": (_set("model.rating_min", None), "'model.rating_min' is missing"),
    "a setting of the wrong type": (_set("run.train.embedding_dim", "16"), "'run.train.embedding_dim' is '16', not"),
    "a run that is not its model's": (
        _set("run.train.embedding_dim", 10**8),
        "the run's embedding_dim 100000000 does not match its model's 16",
    ),
}

# What each command that reads a checkpoint does with the damaged one, named with --checkpoint or as NAME.
USES = [
    ["checkpoints", "show", "bad"],
    ["evaluate", "--checkpoint", "bad"],
    ["predict", "--checkpoint", "bad", "--user", "1", "--items", "2"],
    ["recommend", "--checkpoint", "bad", "--user", "1"],
    ["export", "--checkpoint", "bad", "--output", "{tmp}/m.pt"],
    ["report", "bad", "--output", "{tmp}/r.html"],
    ["train", "--resume", "bad", "--epochs", "5"],
]


@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_a_damaged_record_is_listed_refused_in_one_line_and_removable(trained, tmp_path, damage):
    edit, detail = DAMAGES[damage]
    bad = copy(trained.store, "tiny", "bad", timedelta(days=1))  # the newest: it would be 'latest'
    rewrite(bad, edit)
    listing = trained("checkpoints", "--json")
    assert listing.exit_code == 0, listing.output
    rows = {row["name"]: row for row in json.loads(listing.stdout)["checkpoints"]}
    assert rows["bad"]["problem"].startswith("meta.json is damaged (") and detail in rows["bad"]["problem"]
    assert not rows["bad"]["latest"] and not rows["bad"]["best"]
    assert rows["tiny"]["problem"] is None and rows["tiny"]["latest"] and rows["tiny"]["best"]
    table = trained("checkpoints")
    assert table.exit_code == 0 and "meta.json is damaged" in table.stdout, table.output
    assert trained("predict", "--user", "1", "--items", "2").exit_code == 0  # latest is the good one
    for use in USES:
        result = trained(*(arg.format(tmp=tmp_path) for arg in use))
        assert_error(result, 1, f"checkpoint bad is corrupt: meta.json is damaged ({detail}")
        assert "--embedding-dim" not in result.stderr
    assert trained("checkpoints", "rm", "bad").exit_code == 0
    assert not bad.exists() and (trained.store / "tiny" / "meta.json").exists()


def test_a_format_written_as_text_is_not_taken_for_another_version(trained):
    rewrite(trained.store / "tiny", _set("format", "4"))
    result = trained("checkpoints", "show", "tiny")
    assert_error(result, 1, "checkpoint tiny is corrupt: meta.json is damaged ('format' is '4', not a whole number)")
    assert "reads formats" not in result.stderr


def test_a_resumed_run_whose_record_is_damaged_is_refused_as_corrupt_not_as_a_usage_error(trained):
    rewrite(trained.store / "tiny", _set("run.train.embedding_dim", 10**8))
    before = snapshot(trained.store)
    result = trained("train", "--resume", "tiny", "--epochs", "5")
    assert_error(result, 1, "checkpoint tiny is corrupt: meta.json is damaged (the run's embedding_dim 100000000")
    assert "--embedding-dim" not in result.stderr
    assert snapshot(trained.store) == before


def test_prune_never_removes_a_good_checkpoint_because_of_a_damaged_one(trained):
    """A date that cannot be read sorted after every real one: prune kept the damaged checkpoint as the
    newest and removed every good one. Now it neither counts nor goes; `rm` removes it by name."""
    copy(trained.store, "tiny", "newer", timedelta(hours=1))
    rewrite(copy(trained.store, "tiny", "bad", timedelta(hours=2)), _set("created", "not a date"))
    pruned = trained("checkpoints", "prune", "--keep", "1", "--force")
    assert pruned.exit_code == 0, pruned.output
    assert pruned.stdout.split() == ["Removed", "tiny"]
    assert "Left bad alone: it cannot be read (meta.json is damaged (" in pruned.stderr
    assert sorted(path.name for path in trained.store.iterdir()) == ["bad", "newer"]
    assert trained("checkpoints", "prune", "--keep", "0", "--force").exit_code == 0
    assert sorted(path.name for path in trained.store.iterdir()) == ["bad"]


def test_a_store_of_damaged_checkpoints_says_so_for_latest(trained):
    rewrite(trained.store / "tiny", _set("history", {"epoch": 1}))
    assert_error(trained("evaluate"), 1, "the only one, tiny, is corrupt: meta.json is damaged ('history' is")
    copy(trained.store, "tiny", "other", timedelta(hours=1))
    assert_error(trained("checkpoints", "show", "best"), 1, "all 2 are corrupt; `dlrm checkpoints` says why")
    assert trained("checkpoints").exit_code == 0
