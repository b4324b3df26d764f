"""Small data files in each supported format, written by the tests themselves."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Import benchmarks/<name>.py, which is a script folder rather than a package."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module  # a dataclass in it looks its module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


GENRES = ["Action", "Comedy", "Drama", "Romance", "Sci-Fi"]


def _ratings(n_users: int = 60, n_items: int = 40, n: int = 1500, seed: int = 0, half: bool = False):
    rng = np.random.default_rng(seed)
    users = rng.integers(1, n_users + 1, n)
    items = rng.integers(1, n_items + 1, n)
    taste = rng.normal(0, 1, n_users + 1)[users] + rng.normal(0, 1, n_items + 1)[items]
    raw = np.clip(3 + taste + rng.normal(0, 0.5, n), 1, 5)
    ratings = np.round(raw * 2) / 2 if half else np.round(raw)
    times = 880_000_000 + rng.integers(0, 10_000_000, n)
    return users, items, ratings, times


def write_ml100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    users, items, ratings, times = _ratings()
    rows = [f"{u}\t{i}\t{int(r)}\t{t}" for u, i, r, t in zip(users, items, ratings, times, strict=True)]
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    (folder / "u1.base").write_text("\n".join(rows[:1200]) + "\n")
    (folder / "u1.test").write_text("\n".join(rows[1200:]) + "\n")
    occupations = ["technician", "writer", "student"]
    (folder / "u.user").write_text(
        "".join(f"{u}|{18 + u % 50}|{'MF'[u % 2]}|{occupations[u % 3]}|{85700 + u}\n" for u in range(1, 61))
    )
    lines = []
    for i in range(1, 41):
        flags = ["1" if (i + g) % 7 == 0 or g == i % 19 else "0" for g in range(19)]
        lines.append(f"{i}|Movie {i} ({1980 + i % 20})|01-Jan-{1980 + i % 20}||http://x/{i}|" + "|".join(flags))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return folder


def write_ml1m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    users, items, ratings, times = _ratings(seed=1)
    (folder / "ratings.dat").write_text(
        "".join(f"{u}::{i}::{int(r)}::{t}\n" for u, i, r, t in zip(users, items, ratings, times, strict=True))
    )
    (folder / "users.dat").write_text(
        "".join(f"{u}::{'MF'[u % 2]}::{[1, 18, 25, 35][u % 4]}::{u % 21}::{10000 + 37 * u}\n" for u in range(1, 61))
    )
    titles = [f"Café {i} ({1990 + i % 10})" if i % 5 == 0 else f"Film {i} ({1990 + i % 10})" for i in range(1, 41)]
    (folder / "movies.dat").write_bytes(
        "".join(
            f"{i}::{t}::{GENRES[i % 5]}|{GENRES[(i * 3) % 5]}\n" for i, t in zip(range(1, 41), titles, strict=True)
        ).encode("latin-1")
    )
    return folder


def write_ml_latest(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    users, items, ratings, times = _ratings(seed=2, half=True)
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        + "".join(f"{u},{i},{r:.1f},{t}\n" for u, i, r, t in zip(users, items, ratings, times, strict=True))
    )
    movies = [f'{i},"Movie, The {i} ({2000 + i % 9})",{GENRES[i % 5]}|{GENRES[(i + 1) % 5]}' for i in range(1, 41)]
    (folder / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(movies) + "\n")
    return folder


def write_generic_csv(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    users, items, ratings, times = _ratings(seed=3)
    brands = ["acme", "globex", "initech"]
    lines = ["customer,sku,stars,price,brand,tags,when,region"]
    for u, i, r, t in zip(users, items, ratings, times, strict=True):
        tags = "|".join(GENRES[(i + k) % 5] for k in range(i % 3 + 1))
        lines.append(f"c{u},sku-{i},{int(r)},{10 + i * 1.5},{brands[i % 3]},{tags},{t},r{u % 4}")
    path.write_text("\n".join(lines) + "\n")
    return path
