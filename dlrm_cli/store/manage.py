"""Listing, showing and removing checkpoints: what ``dlrm checkpoints`` does, as functions over a store
that return results (their ``to_dict()`` is the ``--json`` document)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dlrm_cli.config import RunConfig
from dlrm_cli.errors import DlrmUsageError
from dlrm_cli.store.checkpoints import ALIASES, CheckpointInfo, CheckpointStore


@dataclass(frozen=True)
class CheckpointRow:
    """One line of ``dlrm checkpoints``."""

    name: str
    created: str | None
    data: str | None
    epochs: int
    val_rmse: float | None
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
    rows = []
    for info in infos:
        meta = info.meta or {}
        validation = (meta.get("metrics") or {}).get("validation") or {}
        rows.append(
            CheckpointRow(
                name=info.name,
                created=meta.get("created"),
                data=((meta.get("run") or {}).get("data") or {}).get("kind"),
                epochs=len(meta.get("history") or []),
                val_rmse=validation.get("rmse"),
                complete=bool(meta.get("complete")),
                latest=info.name == aliases.get("latest"),
                best=info.name == aliases.get("best"),
                problem=info.problem,
            )
        )
    return Listing(str(store.root), rows)


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
    """What ``prune`` removed (or, with ``dry_run``, would remove), and the old ones an alias kept."""

    removed: list[str]
    kept: list[str]
    aliases: dict[str, str]
    dry_run: bool


def prune_checkpoints(store: CheckpointStore, keep: int, force: bool = False, dry_run: bool = False) -> Pruning:
    """Remove all but the newest ``keep`` checkpoints; 'latest' and 'best' stay unless ``force``."""
    infos = store.infos()
    protected = _protected(store, infos)
    older = [info.name for info in infos[: max(len(infos) - keep, 0)]]
    doomed = [name for name in older if (force or name not in protected) and store.busy(name) is None]
    if not dry_run:
        for name in doomed:
            store.remove(name)
    kept = [name for name in older if name not in doomed]
    reasons = {name: "training" if store.busy(name) is not None else protected[name] for name in kept}
    return Pruning(doomed, kept, reasons, dry_run)


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
