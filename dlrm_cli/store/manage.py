"""Listing, showing and removing checkpoints: what ``dlrm checkpoints`` does, as functions over a store
that return results (their ``to_dict()`` is the ``--json`` document)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dlrm_cli.config import RunConfig
from dlrm_cli.errors import DlrmUsageError
from dlrm_cli.store.checkpoints import ALIASES, CheckpointInfo, CheckpointStore
from dlrm_cli.store.record import selection_of


@dataclass(frozen=True)
class CheckpointRow:
    """One line of ``dlrm checkpoints``. A checkpoint that cannot be read (``problem``) shows only its name
    and, if its record names one readably, its date."""

    name: str
    created: str | None
    data: str | None
    epochs: int | None
    val_rmse: float | None
    selection: dict[str, Any] | None  # the metric that chose its epoch: metric, value, higher_is_better
    complete: bool
    latest: bool
    best: bool
    problem: str | None


@dataclass(frozen=True)
class Listing:
    store: str
    checkpoints: list[CheckpointRow]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_checkpoints(store: CheckpointStore) -> Listing:
    """Every checkpoint in the store, oldest first, with its aliases; unreadable ones name their problem."""
    infos = store.infos()
    aliases = store.aliases(infos)
    return Listing(str(store.root), [_row(info, aliases) for info in infos])


def _row(info: CheckpointInfo, aliases: dict[str, str]) -> CheckpointRow:
    meta = info.meta if info.problem is None and info.meta is not None else None
    if meta is None:
        return CheckpointRow(info.name, info.created or None, None, None, None, None, False, False, False, info.problem)
    return CheckpointRow(
        name=info.name,
        created=meta["created"],
        data=meta["run"]["data"]["kind"],
        epochs=len(meta["history"]),
        val_rmse=meta["metrics"]["validation"].get("rmse"),
        selection=selection_of(meta).to_dict(),
        complete=meta["complete"],
        latest=info.name == aliases.get("latest"),
        best=info.name == aliases.get("best"),
        problem=None,
    )


def _protected(store: CheckpointStore, infos: list[CheckpointInfo] | None = None) -> dict[str, str]:
    """Checkpoint name -> the alias that points at it (``infos``: the store, if already read)."""
    return {name: alias for alias, name in store.aliases(infos).items()}


def remove_checkpoints(store: CheckpointStore, names: list[str], force: bool = False) -> list[str]:
    """Remove the named checkpoints; every name must exist, and what an alias points at needs ``force``.
    Nothing is removed unless all of them can be. Returns the names removed, in order."""
    if any(name in ALIASES for name in names):
        raise DlrmUsageError("name checkpoints to remove; the aliases latest and best are not accepted here")
    for name in names:
        store.resolve(name)
        _refuse_busy(store, name)
    protected = _protected(store)
    for name in names:
        if name in protected and not force:
            raise DlrmUsageError(f"checkpoint {name} is '{protected[name]}'; pass --force to remove it")
    removed = list(dict.fromkeys(names))
    for name in removed:
        store.remove(name)
    return removed


@dataclass(frozen=True)
class Pruning:
    """What ``prune`` removed (or, with ``dry_run``, would remove), the old ones an alias kept, and the
    checkpoints it left alone because they cannot be read (``damaged``: name -> problem)."""

    removed: list[str]
    kept: list[str]
    aliases: dict[str, str]
    dry_run: bool
    damaged: dict[str, str] = field(default_factory=dict)


def prune_checkpoints(store: CheckpointStore, keep: int, force: bool = False, dry_run: bool = False) -> Pruning:
    """Remove all but the newest ``keep`` readable checkpoints; 'latest' and 'best' stay unless ``force``.
    One that cannot be read neither counts nor goes: its date may be wrong, and `rm` removes it by name."""
    infos = store.infos()
    protected = _protected(store, infos)
    readable = [info for info in infos if info.problem is None]
    older = [info.name for info in readable[: max(len(readable) - keep, 0)]]
    doomed = [name for name in older if (force or name not in protected) and store.busy(name) is None]
    if not dry_run:
        for name in doomed:
            store.remove(name)
    kept = [name for name in older if name not in doomed]
    reasons = {name: "training" if store.busy(name) is not None else protected[name] for name in kept}
    damaged = {info.name: info.problem or "" for info in infos if info.problem is not None}
    return Pruning(doomed, kept, reasons, dry_run, damaged)


def _refuse_busy(store: CheckpointStore, name: str) -> None:
    holder = store.busy(name)
    if holder is not None:
        raise DlrmUsageError(
            f"checkpoint {name} is being trained by process {holder}; stop that run before removing it"
        )


@dataclass(frozen=True)
class CheckpointDetails:
    """A checkpoint's metadata: its run record, metrics and history."""

    name: str
    run: RunConfig
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{key: value for key, value in self.meta.items() if key != "files"}}


def show_checkpoint(store: CheckpointStore, ref: str) -> CheckpointDetails:
    checkpoint = store.load(ref)
    return CheckpointDetails(checkpoint.name, checkpoint.run, checkpoint.meta)
