"""Load on `dlrm serve`: requests/s and latency at 1, 16 and 64 concurrent clients, beside the same
scoring called in-process through the Python API, measured in one run.

    .venv/bin/python benchmarks/serve_load.py --checkpoint ml1m [--seconds 5] [--clients 1,16,64]

Needs the serve extra (FastAPI, uvicorn) and aiohttp, which `make setup` installs. The server runs as a
subprocess (`dlrm serve --port 0`); the clients are coroutines of aiohttp's client in this process, each
sending its next request when the last one is answered. (httpx's AsyncClient was tried first: on this
machine it tops out near 200 requests/s at 64 connections even against /healthz, which measures the
client, not the server.) Users are drawn from the checkpoint's training users, items
(10 per /predict) from its catalogue, with a fixed seed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

DLRM = str(Path(sys.executable).with_name("dlrm"))


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": 1000 * pick(0.5), "p99_ms": 1000 * pick(0.99)}


def workload(model: Any, seed: int = 0) -> tuple[list[str], list[str]]:
    """The training users and the catalogue's items of the checkpoint, to draw requests from."""
    catalog = model.loaded.catalog
    import torch

    trained = ~catalog.users.unseen_in_training(torch.arange(len(catalog.users)))
    users = [str(key) for key in catalog.users.keys[trained.numpy()]]
    items = [str(key) for key in catalog.items.keys]
    return users, items


def request_for(kind: str, rng: random.Random, users: list[str], items: list[str]) -> dict[str, Any]:
    user = int(u) if (u := rng.choice(users)).isdigit() else u
    if kind == "predict":
        return {"user": user, "items": [int(i) if i.isdigit() else i for i in rng.sample(items, 10)]}
    return {"user": user, "top": 10}


def in_process(model: Any, kind: str, seconds: float, users: list[str], items: list[str]) -> dict[str, float]:
    """The same requests answered one after another by the Python API, without HTTP."""
    rng = random.Random(0)
    latencies = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        body = request_for(kind, rng, users, items)
        begin = time.perf_counter()
        if kind == "predict":
            model.predict(body["user"], body["items"]).to_dict()
        else:
            model.recommend(body["user"], top=body["top"]).to_dict()
        latencies.append(time.perf_counter() - begin)
    elapsed = time.perf_counter() - started
    return {"requests_per_s": len(latencies) / elapsed, **percentiles(latencies)}


async def over_http(url: str, kind: str, clients: int, seconds: float, users: list[str], items: list[str]) -> dict:
    """``clients`` clients, each sending its next request when the last is answered, for ``seconds``
    after a warm-up of half a second (which opens the connections and is not counted)."""
    latencies: list[float] = []
    failures = 0
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=clients)) as session:
        warm_until = time.perf_counter() + 0.5
        deadline = warm_until + seconds

        async def one_client(seed: int) -> None:
            nonlocal failures
            rng = random.Random(seed)
            while (begin := time.perf_counter()) < deadline:
                async with session.post(f"/{kind}", json=request_for(kind, rng, users, items)) as response:
                    await response.read()
                if begin >= warm_until:
                    failures += response.status != 200
                    latencies.append(time.perf_counter() - begin)

        await asyncio.gather(*(one_client(seed) for seed in range(clients)))
    return {"requests_per_s": len(latencies) / seconds, **percentiles(latencies), "failures": failures}


def start_server(args: argparse.Namespace, *extra: str) -> tuple[subprocess.Popen, str]:
    command = [DLRM, "serve", "--checkpoint", args.checkpoint, "--port", "0", "--max-wait-ms", str(args.max_wait_ms)]
    command += extra
    if args.store:
        command += ["--store", args.store]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    for line in server.stderr:
        if found := re.search(r"http://([\d.]+):(\d+)", line):
            url = f"http://{found.group(1)}:{found.group(2)}"
            break
    else:
        raise SystemExit(f"dlrm serve did not start (exit {server.wait()})")
    while True:  # wait for the event, not a fixed time
        try:
            with urllib.request.urlopen(f"{url}/readyz") as response:
                if response.status == 200:
                    return server, url
        except OSError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"dlrm serve stopped (exit {server.returncode})")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="latest")
    parser.add_argument("--store", default=os.environ.get("DLRM_CHECKPOINT_DIR"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    from dlrm_cli import load

    model = load(args.checkpoint, args.store)
    users, items = workload(model)
    results: dict[str, Any] = {"checkpoint": model.name, "items_in_catalogue": len(items), "in_process": {}, "http": {}}
    for kind in ("predict", "recommend"):
        in_process(model, kind, 0.5, users, items)  # warm up
        results["in_process"][kind] = in_process(model, kind, args.seconds, users, items)
    del model

    server, url = start_server(args)
    try:
        for kind in ("predict", "recommend"):
            results["http"][kind] = {
                str(c): asyncio.run(over_http(url, kind, c, args.seconds, users, items)) for c in levels
            }
    finally:
        server.terminate()
        server.wait()
    # The same server with micro-batching off (a batch holds one request), at the most clients.
    server, url = start_server(args, "--max-batch", "1")
    try:
        results["unbatched"] = {
            kind: asyncio.run(over_http(url, kind, levels[-1], args.seconds, users, items))
            for kind in ("predict", "recommend")
        }
    finally:
        server.terminate()
        server.wait()

    for kind in ("predict", "recommend"):
        http = results["http"][kind]
        one, most = http[str(levels[0])]["requests_per_s"], http[str(levels[-1])]["requests_per_s"]
        results[f"{kind}_clients_gain"] = most / one
        results[f"{kind}_batching_gain"] = most / results["unbatched"][kind]["requests_per_s"]
        results[f"{kind}_http_share_of_in_process"] = most / results["in_process"][kind]["requests_per_s"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"checkpoint {results['checkpoint']}, {len(items):,} items; {args.seconds:g} s per figure")
    print(f"{'endpoint':<11}{'clients':>9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for kind in ("predict", "recommend"):
        own = results["in_process"][kind]
        print(f"{kind:<11}{'in-proc':>9}{own['requests_per_s']:>10,.0f}{own['p50_ms']:>9.1f}{own['p99_ms']:>9.1f}")
        for c in levels:
            row = results["http"][kind][str(c)]
            print(f"{kind:<11}{c:>9}{row['requests_per_s']:>10,.0f}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}")
        row = results["unbatched"][kind]
        label = f"{levels[-1]} unb."
        print(f"{kind:<11}{label:>9}{row['requests_per_s']:>10,.0f}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}")
        print(
            f"  {kind} at {levels[-1]} clients: {results[f'{kind}_clients_gain']:.1f}x the throughput at "
            f"{levels[0]}, {results[f'{kind}_batching_gain']:.1f}x the throughput unbatched, "
            f"{results[f'{kind}_http_share_of_in_process']:.0%} of in-process"
        )
    rows = [*(row for kind in results["http"].values() for row in kind.values()), *results["unbatched"].values()]
    failures = sum(row["failures"] for row in rows)
    print(f"failed requests: {failures}")


if __name__ == "__main__":
    main()
