"""A cache of parsed ratings, keyed by the contents of the files read, so a second run skips parsing.

Entries are ``.npz`` files of plain arrays, read with ``allow_pickle=False``. The folder is
``$DLRM_CACHE_DIR`` or ``~/.cache/dlrm``; a cache that cannot be written is skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dlrm_cli.config import FileSource
from dlrm_cli.data.context import RawContext
from dlrm_cli.data.readers import RawData, SideTable

# Part of every data fingerprint that checkpoints record: it stays 1, or older checkpoints would report
# their data as changed.
READER_VERSION = 1
# Names the cache entries: bump it when parsing changes (what it accepts or how), so that entries parsed
# by an older dlrm are parsed again. 2: ratings beyond ±1e15 refused, ids stripped of surrounding spaces.
# 3: a side column that varies within users and items is read as a context column.
PARSER_VERSION = 3


def cache_dir() -> Path:
    return Path(os.environ.get("DLRM_CACHE_DIR") or Path.home() / ".cache" / "dlrm")


def fingerprint(files: list[Path], source: FileSource) -> str:
    """A key from the reader version, what the parse depends on (the kind of data and its CSV columns)
    and every file's bytes. Checkpoints record it, so its form must not change."""
    columns = source.columns.to_dict() if source.columns is not None else None
    reader = {"v": READER_VERSION, "kind": source.kind, "columns": columns}
    digest = hashlib.sha256(json.dumps(reader, sort_keys=True, default=str).encode())
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()[:32]


def cached(key: str, parse: Callable[[], RawData]) -> tuple[RawData, bool]:
    """The parsed data for ``key``, from the cache when present; returns (data, came_from_cache)."""
    path = cache_dir() / f"{key}-p{PARSER_VERSION}.npz"
    if path.is_file():
        try:
            return _load(path), True
        except Exception:  # whatever is wrong with a damaged entry, it is parsed again and replaced
            pass
    raw = parse()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.npz")
        np.savez(tmp, **_arrays(raw))
        os.replace(tmp, path)
    except OSError:
        pass
    return raw, False


def _arrays(raw: RawData) -> dict[str, np.ndarray]:
    arrays = {"user": raw.user, "item": raw.item, "rating": raw.rating}
    if raw.time is not None:
        arrays["time"] = raw.time
    meta = {"rating_range": raw.rating_range, "release": raw.release, "n_train": raw.n_train, "implicit": raw.implicit}
    for kind, table in (("users", raw.users), ("items", raw.items)):
        if table is None:
            continue
        meta[kind] = {"dense": list(table.dense), "sparse": list(table.sparse), "titles": table.titles is not None}
        arrays[f"{kind}.ids"] = table.ids
        for name, values in table.dense.items():
            arrays[f"{kind}.dense.{name}"] = values
        for name, values in table.sparse.items():
            arrays[f"{kind}.sparse.{name}"] = values
        if table.titles is not None:
            arrays[f"{kind}.titles"] = table.titles
    meta["context"] = {"dense": list(raw.context.dense), "sparse": list(raw.context.sparse)}
    for kind in ("dense", "sparse"):
        for name, values in getattr(raw.context, kind).items():
            arrays[f"context.{kind}.{name}"] = values
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays


def _load(path: Path) -> RawData:
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(str(archive["meta"]))
        tables = {}
        for kind in ("users", "items"):
            if kind not in meta:
                tables[kind] = None
                continue
            info = meta[kind]
            tables[kind] = SideTable(
                ids=archive[f"{kind}.ids"],
                dense={name: archive[f"{kind}.dense.{name}"] for name in info["dense"]},
                sparse={name: archive[f"{kind}.sparse.{name}"] for name in info["sparse"]},
                titles=archive[f"{kind}.titles"] if info["titles"] else None,
            )
        return RawData(
            user=archive["user"],
            item=archive["item"],
            rating=archive["rating"],
            time=archive.get("time"),
            rating_range=tuple(meta["rating_range"]),
            users=tables["users"],
            items=tables["items"],
            release=meta["release"],
            n_train=int(meta["n_train"]),
            implicit=bool(meta.get("implicit", False)),
            context=RawContext(
                **{
                    kind: {name: archive[f"context.{kind}.{name}"] for name in meta["context"][kind]}
                    for kind in ("dense", "sparse")
                }
            ),
        )
