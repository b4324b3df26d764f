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
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(data: str, cores: str, processes: int, options: list[str], env: dict[str, str]) -> dict[str, object]:
    name = f"p{processes}c{cores.replace(',', '_')}"
    command = ["taskset", "-c", cores, sys.executable, "-m", "dlrm_cli", "train", "--data", data, "--epochs", "1"]
    command += ["--name", name, *options] + (["--nproc-per-node", str(processes)] if processes > 1 else [])
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            out.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{out.read()[-2000:]}")
    epoch = json.loads((Path(env["DLRM_CHECKPOINT_DIR"]) / name / "meta.json").read_text())["history"][0]
    ranks = sorted((key for key in epoch if key.startswith("peak_gib_rank_")), key=lambda key: int(key.split("_")[-1]))
    peaks = [epoch[key] for key in ranks] or [usage.ru_maxrss / 2**20]  # one process: its own peak
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
    for run in runs:
        peaks = ", ".join(f"{peak:.1f}" for peak in run["peaks"]) or "-"  # type: ignore[union-attr]
        print(f"| {run['cores']} | {run['processes']} | {run['rate']:,.0f} | {run['wall']:.0f} s | {peaks} GiB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
