"""What one ``dlrm train`` was asked to do, checked against the checkpoint store before any work.

A ``TrainRequest`` is built once, by the command line (or by a test, or a script), and travels as is:
into ``dlrm_cli.training.run`` in this process, or as JSON to the workers of a distributed run. Nothing here
imports torch, so a request that cannot work is refused at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dlrm_cli.config import RunConfig
from dlrm_cli.errors import DlrmError, DlrmUsageError
from dlrm_cli.store.checkpoints import CheckpointStore, validate_name

# What a resumed run may change: how long it trains, and where. Everything else is the checkpoint's.
RESUMABLE = frozenset({"epochs", "threads", "device", "checkpoint_every"})
NOT_SETTINGS = frozenset({"resume", "store", "config", "nproc_per_node", "print_plan"})


@dataclass(frozen=True)
class TrainRequest:
    """One training run to do.

    ``name`` is the checkpoint to create (``None``: a fresh DATA-DATE-TIME name); ``resume`` a checkpoint
    to continue instead. ``given`` names the options the user set on the command line: a resumed run
    takes the ones in ``RESUMABLE`` from ``config`` and everything else from its checkpoint.
    """

    config: RunConfig
    store: Path
    name: str | None = None
    resume: str | None = None
    processes: int = 1
    show_plan: bool = False
    given: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "store": str(self.store),
            "name": self.name,
            "resume": self.resume,
            "processes": self.processes,
            "show_plan": self.show_plan,
            "given": sorted(self.given),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainRequest:
        return cls(
            config=RunConfig.from_dict(raw["config"]),
            store=Path(raw["store"]),
            name=raw["name"],
            resume=raw["resume"],
            processes=int(raw["processes"]),
            show_plan=bool(raw["show_plan"]),
            given=frozenset(raw["given"]),
        )


def prepare(request: TrainRequest) -> TrainRequest:
    """Refuse what cannot work before anything is loaded; a resumed run gets its checkpoint's record.

    Raises ``DlrmUsageError`` for a name in use or invalid, a setting a resumed run cannot change, or a
    store that cannot be written; ``DlrmError`` for a resumed run that has already finished."""
    store = CheckpointStore(request.store)
    if request.resume is not None:
        request = _resumed(store, request)
    elif request.name is not None:
        validate_name(request.name)
        if store.exists(request.name):
            raise DlrmUsageError(f"checkpoint {request.name} already exists in {store.root}; choose another --name")
    store.ensure_writable()
    return request


def _resumed(store: CheckpointStore, request: TrainRequest) -> TrainRequest:
    extra = sorted(request.given - RESUMABLE - NOT_SETTINGS)
    if extra:
        raise DlrmUsageError(
            f"--{extra[0].replace('_', '-')} cannot be changed on --resume; a resumed run keeps its settings "
            "(only --epochs, --threads, --device and --checkpoint-every may be given)"
        )
    checkpoint = store.load(request.resume or "")
    saved = RunConfig.from_dict(checkpoint.meta["run"])
    changes = {key: getattr(request.config.train, key) for key in request.given & RESUMABLE}
    config = replace(saved, train=replace(saved.train, **changes))
    done = int(checkpoint.meta.get("epochs_done", len(checkpoint.meta.get("history", []))))
    if config.train.epochs <= done:
        if checkpoint.meta.get("complete"):
            raise DlrmError(
                f"checkpoint {checkpoint.name} already finished its {done} epochs; "
                f"pass --epochs above {done} to train it further"
            )
        raise DlrmUsageError(f"--epochs {config.train.epochs} is not above the {done} epochs already done")
    return replace(request, config=config, resume=checkpoint.name, name=None)
