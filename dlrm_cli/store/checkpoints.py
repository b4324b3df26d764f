"""The checkpoint store: one folder per checkpoint, written under a temporary name and renamed into place.

A checkpoint folder holds ``meta.json`` (settings, feature metadata, metrics, history, versions and the
SHA-256 of every other file) and tensor files read with ``torch.load(weights_only=True)``, which never
executes code from the file. ``latest`` is not a file that can go stale: it is always the newest complete
checkpoint found in the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlrm_cli import CHECKPOINT_FORMAT, READABLE_FORMATS, __version__
from dlrm_cli.errors import CheckpointNotFound, CorruptCheckpoint, DlrmError, DlrmUsageError
from dlrm_cli.store.record import created_at, format_problem, record_problem, selection_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from dlrm_cli.config import RunConfig

META = "meta.json"
LINK_PROBLEM = "a symbolic link; dlrm does not follow links inside the store (move the folder itself here)"
ALIASES = ("latest", "best")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_name(name: str) -> str:
    if name in ALIASES or not NAME_PATTERN.match(name):
        raise DlrmUsageError(
            f"invalid checkpoint name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, and not {' or '.join(ALIASES)}"
        )
    return name


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class CheckpointInfo:
    """What ``dlrm checkpoints`` lists about one checkpoint."""

    name: str
    path: Path
    meta: dict[str, Any] | None
    problem: str | None = None

    @property
    def created(self) -> str:
        """When it was written, as its record says (ISO 8601), or "" where the record names no date."""
        value = (self.meta or {}).get("created")
        return value if isinstance(value, str) and created_at(value) is not None else ""

    @property
    def order(self) -> tuple[datetime, str]:
        """Oldest first; one without a readable date comes before all the others."""
        return created_at(self.created) or datetime.min.replace(tzinfo=UTC), self.name


@dataclass
class Checkpoint:
    """A loaded checkpoint: its metadata and its tensor files, checksums verified."""

    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def run(self) -> RunConfig:
        """The run record: how this checkpoint was trained, and on what data."""
        from dlrm_cli.config import RunConfig

        try:
            return RunConfig.from_dict(self.meta["run"])
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptCheckpoint(f"checkpoint {self.name} is corrupt: bad run record ({error})") from None

    def tensors(self, file: str) -> dict[str, Any]:
        """Load one tensor file; never unpickles arbitrary objects."""
        import pickle

        import torch

        path = self.path / file
        expected = self.meta.get("files", {}).get(file)
        if expected is None:
            raise CorruptCheckpoint(f"checkpoint {self.name} is corrupt: {file} is not listed in its meta.json")
        try:
            actual = sha256(path)
        except OSError as error:
            raise CorruptCheckpoint(
                f"checkpoint {self.name} is corrupt: cannot read {file} ({error.strerror})"
            ) from None
        if actual != expected:
            raise CorruptCheckpoint(f"checkpoint {self.name} is corrupt: {file} does not match its recorded checksum")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise CorruptCheckpoint(
                f"checkpoint {self.name} is corrupt: {file} cannot be loaded (it holds objects other than "
                "tensors, which dlrm refuses to unpickle)"
            ) from None
        except (RuntimeError, EOFError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CorruptCheckpoint(
                f"checkpoint {self.name} is corrupt: {file} cannot be loaded ({first_line})"
            ) from None


class CheckpointStore:
    """A folder of checkpoints. Every write lands atomically; a crash leaves only a hidden temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # Reading ---------------------------------------------------------------------------------------
    def infos(self) -> list[CheckpointInfo]:
        """Every checkpoint in the store, oldest first; unreadable ones carry a ``problem``."""
        if not self.root.is_dir():
            if self.root.exists():
                raise DlrmUsageError(f"checkpoint store {self.root} is not a folder")
            return []
        self._recover()
        infos = []
        for path in self.root.iterdir():
            if path.name.startswith("."):
                continue
            if path.is_symlink():  # listed, so that it can be seen and removed, but never read through
                infos.append(CheckpointInfo(path.name, path, None, LINK_PROBLEM))
            elif path.is_dir():
                infos.append(self._info(path))
        return sorted(infos, key=lambda info: info.order)

    def _recover(self) -> None:
        """Finish what a killed writer left: put back a checkpoint it was replacing, drop its temporary files
        and its claim on the name."""
        for path in self.root.glob(".*-*"):
            kind, _, rest = path.name[1:].partition("-")
            if kind == "claim":
                holder = self.holder(rest)
                if holder is None or not _alive(holder):
                    with contextlib.suppress(OSError):
                        path.unlink()  # the run that held the name was killed
                continue
            if kind not in ("tmp", "replaced", "trash"):
                continue
            name, _, pid = rest.rpartition("-")
            if not pid.isdigit() or _alive(int(pid)):
                continue
            try:
                if kind == "replaced" and not os.path.lexists(self.root / name):
                    os.rename(path, self.root / name)
                elif path.is_symlink():
                    path.unlink()
                else:
                    shutil.rmtree(path)
            except OSError:
                pass  # another process is recovering the same folder

    def _info(self, path: Path) -> CheckpointInfo:
        if path.is_symlink():
            return CheckpointInfo(path.name, path, None, LINK_PROBLEM)
        try:
            meta = json.loads((path / META).read_text())
        except FileNotFoundError:
            return CheckpointInfo(path.name, path, None, "meta.json is missing")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            return CheckpointInfo(path.name, path, None, f"meta.json is unreadable ({error})")
        if not isinstance(meta, dict) or "format" not in meta:
            return CheckpointInfo(path.name, path, None, "meta.json was not written by dlrm")
        if meta.get("meta_sha256") != _meta_digest(meta):
            return CheckpointInfo(path.name, path, None, "meta.json does not match its recorded checksum")
        if format_problem(meta) is not None:
            return CheckpointInfo(path.name, path, None, format_problem(meta))
        if meta["format"] not in READABLE_FORMATS:
            *earlier, last = (str(f) for f in READABLE_FORMATS)
            readable = f"{', '.join(earlier)} and {last}" if earlier else last
            return CheckpointInfo(
                path.name,
                path,
                meta,
                f"written by dlrm {meta.get('dlrm_version', '?')} in checkpoint format {meta['format']}; "
                f"this is dlrm {__version__}, which reads formats {readable}",
            )
        try:
            meta = upgrade_meta(meta)
        except (KeyError, TypeError, ValueError, AttributeError):
            problem = f"meta.json is damaged (it does not hold what a format {meta['format']} record holds)"
            return CheckpointInfo(path.name, path, None, problem)
        problem = record_problem(meta)
        return CheckpointInfo(path.name, path, None if problem else meta, problem)

    def aliases(self, infos: list[CheckpointInfo] | None = None) -> dict[str, str]:
        """``latest``: the newest complete checkpoint. ``best``: of the complete checkpoints trained on the
        same data as ``latest`` and chosen by the same validation metric (``record.selection_of``: RMSE, or
        NDCG@10 for a model with only a ranking head), the one where that metric is best. A damaged or
        unreadable checkpoint is neither."""
        infos = self.infos() if infos is None else infos
        complete = [i for i in infos if i.problem is None and (i.meta or {}).get("complete", False)]
        if not complete:
            return {}
        latest = complete[-1]
        kind = (_data_key(latest.meta), selection_of(latest.meta or {}).metric)
        same = [i for i in complete if (_data_key(i.meta), selection_of(i.meta or {}).metric) == kind]
        best = min(same, key=lambda i: selection_of(i.meta or {}).rank())
        return {"latest": latest.name, "best": best.name}

    def resolve(self, ref: str) -> str:
        """Turn ``latest``, ``best`` or a name into the name of an existing checkpoint."""
        infos = self.infos()
        if ref in ALIASES:
            aliases = self.aliases(infos)
            if ref not in aliases:
                raise self._no_alias(ref, infos)
            return aliases[ref]
        if not any(info.name == ref for info in infos):
            if not infos:
                raise CheckpointNotFound(f"no checkpoint named {ref!r}: the store {self.root} is empty")
            raise CheckpointNotFound(f"no checkpoint named {ref!r} in {self.root}; `dlrm checkpoints` lists them")
        return ref

    def _no_alias(self, ref: str, infos: list[CheckpointInfo]) -> DlrmError:
        """Why ``ref`` points at nothing: an empty store (a usage error, as an unknown name is), a run
        stopped before its last epoch, or checkpoints that cannot be read."""
        if not infos:
            return CheckpointNotFound(f"no checkpoints in {self.root}; train one with `dlrm train`")
        readable = [info.name for info in infos if info.problem is None]
        if readable:
            name = readable[-1]
            return DlrmError(
                f"no complete checkpoint in {self.root} for {ref!r}: {name} is from a run that was stopped "
                f"before its last epoch; use it with --checkpoint {name}, or finish it with "
                f"`dlrm train --resume {name}`"
            )
        if len(infos) == 1:
            return CorruptCheckpoint(
                f"no checkpoint in {self.root} for {ref!r}: the only one, {infos[0].name}, is corrupt: "
                f"{infos[0].problem}"
            )
        return CorruptCheckpoint(
            f"no checkpoint in {self.root} for {ref!r}: all {len(infos)} are corrupt; `dlrm checkpoints` says why"
        )

    def load(self, ref: str) -> Checkpoint:
        name = self.resolve(ref)
        info = self._info(self.root / name)
        if info.problem is not None:
            raise CorruptCheckpoint(f"checkpoint {name} is corrupt: {info.problem}")
        return Checkpoint(name=name, path=info.path, meta=info.meta or {})

    # Writing ---------------------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        """Fail early, before hours of training, if the store cannot take a checkpoint."""
        if self.root.exists() and not self.root.is_dir():
            raise DlrmUsageError(f"checkpoint store {self.root} is not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DlrmUsageError(f"cannot create checkpoint store {self.root}: {error.strerror}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise DlrmUsageError(f"checkpoint store {self.root} is not writable")

    def exists(self, name: str) -> bool:
        return os.path.lexists(self.root / name)

    # Claims: a running training run holds its checkpoint's name ----------------------------------
    def claim(self, name: str) -> None:
        """Reserve ``name`` for this process's run until ``release``. The claim is a symbolic link
        ``.claim-NAME`` pointing at the holder's process id, created atomically (``os.symlink`` fails if
        it exists), so of two runs started together exactly one gets the name. A claim whose process has
        died is taken over. Raises ``DlrmUsageError`` while another live process holds ``name``."""
        path = self.root / f".claim-{name}"
        for _ in range(5):
            try:
                os.symlink(str(os.getpid()), path)
                return
            except FileExistsError:
                holder = self.holder(name)
                if holder == os.getpid():
                    return
                if holder is not None and _alive(holder):
                    raise DlrmUsageError(
                        f"checkpoint {name} is being written by another training run (process {holder}); "
                        "choose another --name, or wait for that run to end"
                    ) from None
                with contextlib.suppress(OSError):
                    path.unlink()  # its process is gone: the claim is stale
            except OSError as error:
                raise DlrmError(f"cannot claim checkpoint name {name} in {self.root}: {error.strerror}") from None
        raise DlrmUsageError(f"cannot claim checkpoint name {name} in {self.root}; try again")

    def holder(self, name: str) -> int | None:
        """The process id holding a claim on ``name``, or None."""
        try:
            target = os.readlink(self.root / f".claim-{name}")
        except OSError:
            return None
        return int(target) if target.isdigit() else None

    def release(self, name: str) -> None:
        """Give up this process's claim on ``name`` (nothing happens if it holds none)."""
        if self.holder(name) == os.getpid():
            with contextlib.suppress(OSError):  # left behind, it is cleared once this process has ended
                (self.root / f".claim-{name}").unlink()

    def busy(self, name: str) -> int | None:
        """The live process that is training checkpoint ``name`` (other than this one), or None."""
        holder = self.holder(name)
        return holder if holder is not None and holder != os.getpid() and _alive(holder) else None

    def save(
        self,
        *,
        name: str | None,
        prefix: str,
        meta: dict[str, Any],
        tensors: dict[str, Any],
        replace: bool = False,
        before_publish: Callable[[Path], None] | None = None,
    ) -> str:
        """Write a checkpoint and return its name.

        ``tensors`` maps file names to objects of tensors, lists, dicts and numbers. With ``name=None`` a
        fresh name ``PREFIX-YYYYmmdd-HHMMSS`` is chosen (with a suffix if two saves share a second).
        ``replace=True`` swaps a new version in for the checkpoint ``name`` (a run saving each epoch).
        ``before_publish`` is called with the finished temporary folder just before it is renamed into
        place (tests use it to kill a writer at that moment).
        """
        import torch

        self.ensure_writable()
        now = datetime.now(UTC)
        tmp = self.root / f".tmp-{secrets.token_hex(4)}-{os.getpid()}"
        try:
            tmp.mkdir()
            files = {}
            for file, obj in tensors.items():
                torch.save(obj, tmp / file)
                files[file] = sha256(tmp / file)
            full_meta = {
                "format": CHECKPOINT_FORMAT,
                "dlrm_version": __version__,
                "created": now.isoformat(timespec="microseconds"),
                **meta,
                "files": files,
            }
            if "metrics" in full_meta and "selection" not in full_meta:  # what chose the epoch: best follows it
                full_meta["selection"] = selection_of(full_meta).to_dict()
            full_meta["meta_sha256"] = _meta_digest(full_meta)
            with (tmp / META).open("w") as handle:
                json.dump(full_meta, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            for file in tensors:
                _fsync(tmp / file)
            if before_publish is not None:
                before_publish(tmp)
            if replace and name is not None and self.exists(name):
                return self._swap(tmp, name)
            return self._publish(tmp, name, f"{prefix}-{now:%Y%m%d-%H%M%S}")
        except OSError as error:  # a full disk, a store made read-only meanwhile: what was there stays
            shutil.rmtree(tmp, ignore_errors=True)
            what = f"checkpoint {name}" if name else "a new checkpoint"
            raise DlrmError(
                f"cannot write {what} to {self.root}: {error.strerror or error}; the store is as it was"
            ) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _publish(self, tmp: Path, name: str | None, base: str) -> str:
        """Rename the finished folder into place; a rename never replaces a non-empty folder."""
        candidates = [name] if name is not None else [base, *(f"{base}-{i}" for i in range(2, 1000))]
        for candidate in candidates:
            target = self.root / candidate
            if os.path.lexists(target):
                continue
            try:
                os.rename(tmp, target)
            except OSError:
                if os.path.lexists(target):
                    continue
                raise
            with contextlib.suppress(OSError):
                _fsync(self.root)  # the rename is done; a failed flush does not undo it
            return candidate
        raise DlrmUsageError(f"checkpoint {name} already exists in {self.root}; choose another --name")

    def _swap(self, tmp: Path, name: str) -> str:
        """Replace checkpoint ``name``. Killed between the two renames, the old version is put back by
        ``_recover``; at every moment the store holds a whole old or a whole new checkpoint."""
        target = self.root / name
        old = self.root / f".replaced-{name}-{os.getpid()}"
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)  # put the old version back before reporting
            raise
        shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(OSError):
            _fsync(self.root)  # the renames are done; a failed flush does not undo them
        return name

    def remove(self, name: str) -> None:
        """Remove a checkpoint: renamed out of sight first, so a crash never leaves half a checkpoint listed."""
        trash = self.root / f".trash-{name}-{os.getpid()}"
        try:
            if (self.root / name).is_symlink():
                (self.root / name).unlink()  # the link goes; what it points at is not the store's
                return
            os.rename(self.root / name, trash)
        except OSError as error:
            raise DlrmUsageError(f"cannot remove checkpoint {name} from {self.root}: {error.strerror}") from None
        with contextlib.suppress(OSError):
            _fsync(self.root)  # the rename is done; a failed flush does not undo it
        shutil.rmtree(trash, ignore_errors=True)  # what cannot go now, a later listing clears


def upgrade_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's metadata in the current format. Format 1 kept the training settings (``train``),
    the effective command-line options (``options``) and the data source (``data``) side by side; format 2
    keeps one run record, ``run``, of the training settings and the data source. Format 3 adds the
    implicit-feedback bags and the id biases, which every run before it trained without. Format 4 adds the
    model's ``heads`` and the run's ``objective``, whose defaults (one rating head) are what every earlier
    run trained. Format 5 adds the two stages (``retrieval``), which no earlier run had."""
    if meta["format"] >= 5:
        return meta
    meta = dict(meta)
    if meta["format"] == 1:
        train = dict(meta.pop("train"))
        options = meta.pop("options", None) or {}
        train.setdefault("checkpoint_every", int(options.get("checkpoint_every", 1)))
        meta["run"] = {"train": train, "data": meta.pop("data")}
    run = dict(meta["run"])
    run["train"] = {**run["train"], "retrieval": "none"}
    if meta["format"] < 3:
        run["train"].update(bags=False, biases=False)
    meta["run"] = run
    return meta


def _meta_digest(meta: dict[str, Any]) -> str:
    body = {key: value for key, value in meta.items() if key != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _data_key(meta: dict[str, Any] | None) -> str:
    data = ((meta or {}).get("run") or {}).get("data") or {}
    return json.dumps(data, sort_keys=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
