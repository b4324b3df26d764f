"""Parsing speed of a large MovieLens release (first run parses, second run reads the cache).

    .venv/bin/python benchmarks/parse_speed.py DIR

DIR holds a MovieLens release, e.g. ML-25M's ratings.csv and movies.csv, or one written by
benchmarks/ml25m_shape.py.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    import os

    folder = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DLRM_CACHE_DIR"] = cache
        from dlrm_cli.data.sources import load_dataset, load_raw, parse_data_option

        source = parse_data_option(f"movielens:{folder}")
        for label in ("parse (cold cache)", "cached (second run)"):
            started = time.perf_counter()
            raw, _ = load_raw(source)
            seconds = time.perf_counter() - started
            print(f"{label:<22} {len(raw):>12,} rows in {seconds:6.2f} s = {len(raw) / seconds / 1e6:5.1f} M rows/s")
        started = time.perf_counter()
        data = load_dataset(source)
        seconds = time.perf_counter() - started
        print(f"{'splits and features':<22} {len(data.train):>12,} training rows in {seconds:6.2f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak memory {peak:.1f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
