"""What more processes buy: one training epoch as one process and as several, on a chosen set of cores.

    .venv/bin/python benchmarks/processes.py DATA [--cores 0,0-1] [--processes 1,2] [--options "..."]

Runs ``taskset -c CORES dlrm train --data DATA --epochs 1 --nproc-per-node N OPTIONS`` for each core set and
process count (N = 1 runs in one process, without torchrun), one after another, and prints each run's training
samples/s, its wall time and peak resident memory: each rank's (as ``dlrm train`` shows it) when distributed,
the process's otherwise. Core sets are ``taskset``'s lists, so ``0`` is one core and ``0-1`` two.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from scale_targets import run

from dlrm_cli.runtime.memory import rank_peaks


def one_run(data: str, cores: str, processes: int, options: list[str], env: dict[str, str]) -> dict[str, object]:
    name = f"p{processes}c{cores.replace(',', '_')}"
    command = ["taskset", "-c", cores, sys.executable, "-m", "dlrm_cli", "train", "--data", data, "--epochs", "1"]
    command += ["--name", name, *options] + (["--nproc-per-node", str(processes)] if processes > 1 else [])
    _, wall, peak = run(command, env)
    epoch = json.loads((Path(env["DLRM_CHECKPOINT_DIR"]) / name / "meta.json").read_text())["history"][0]
    peaks = rank_peaks(epoch) or [peak]  # one process: its own peak
    return {"cores": cores, "processes": processes, "rate": epoch["samples_per_s"], "wall": wall, "peaks": peaks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a --data value, e.g. movielens:../shared/data/ml-1m-subset")
    parser.add_argument("--cores", default="0,0-1", help="taskset core lists, comma-separated (default 0,0-1)")
    parser.add_argument("--processes", default="1,2", help="process counts, comma-separated (default 1,2)")
    parser.add_argument("--options", default="--retrieval none", help="more dlrm train options")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "DLRM_CHECKPOINT_DIR": f"{folder}/store"}
        env.setdefault("DLRM_CACHE_DIR", f"{folder}/cache")
        for cores in args.cores.split(","):
            for processes in (int(count) for count in args.processes.split(",")):
                runs.append(one_run(args.data, cores, processes, args.options.split(), env))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print("| cores | processes | samples/s | wall time | peak memory (by rank) |")
    print("|---|---|---|---|---|")
    for one in runs:
        peaks = ", ".join(f"{peak:.1f}" for peak in one["peaks"]) or "-"  # type: ignore[union-attr]
        print(f"| {one['cores']} | {one['processes']} | {one['rate']:,.0f} | {one['wall']:.0f} s | {peaks} GiB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
