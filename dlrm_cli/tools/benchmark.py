"""``dlrm benchmark``: training throughput of three paths for two models, the total throughput of several
training processes at once against one alone, inference latency, evaluate throughput and MLP efficiency,
all in one run (warm-up excluded, median of repeats). Only the concurrency figure runs in other processes.

The ``reference`` path is a DLRM of the same architecture written the way a hand-written script usually
is: one ``nn.EmbeddingBag`` per table, a ``Dataset`` returning one dict per sample, a ``DataLoader``
collating them, and Adam over every parameter. The ``batched`` path is the same script with its batches
cut from tensors by indexing (no per-sample Python) and Adam's fused kernel: about as fast as eager PyTorch
runs this model where its tables are small (the seed example's), the floor of a hand-written script there.
Both exist here only to be measured against.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from dlrm_cli.config import BENCHMARK_MODELS, BENCHMARK_PATHS, BenchmarkSettings, SyntheticSpec, TrainConfig
from dlrm_cli.data.catalog import Dataset
from dlrm_cli.data.synthetic import generate
from dlrm_cli.errors import DlrmError, DlrmUsageError
from dlrm_cli.model.dlrm import RatingDLRM, to_rating
from dlrm_cli.model.optim import build_for_training
from dlrm_cli.runtime.memory import keep_freed_memory
from dlrm_cli.runtime.threads import available_cpus, chosen_threads, take_charge
from dlrm_cli.scoring.metrics import score
from dlrm_cli.training.bag_cache import BagCache, training_batch
from dlrm_cli.training.run import model_config_for, train_step, training_data

REFERENCES = ("reference", "batched")  # hand-written scripts: no bags
# The models a run can measure. ``seed`` has the sizes of the example dlrm started from (and of the
# reference script people write from it): 1,000 users and 500 items, embeddings of 64, MLPs 32-64 and 128-64.
# ``movielens`` is the default model on data of the MovieLens 1M subset's sizes, whose bags (a user's rated
# items, an item's raters) are what MovieLens data trains with; ``default`` has --rows-row tables and the
# built-in data's context columns (a rating's channel and hour). Neither the seed example nor MovieLens has any.
MODELS: dict[str, TrainConfig] = {
    "default": TrainConfig(),
    "movielens": TrainConfig(),
    "seed": TrainConfig(embedding_dim=64, bottom_mlp=(32, 64), top_mlp=(128, 64), bags=False, biases=False),
}
SEED_USERS, SEED_ITEMS = 1_000, 500
MOVIELENS_SIZES = SyntheticSpec(users=3_000, items=3_600, ratings=487_650, context=False)


@dataclass(frozen=True)
class BenchmarkReport:
    """Every figure of one benchmark run; ``to_dict()`` is ``dlrm benchmark --json``."""

    settings: dict[str, Any]
    train: dict[str, dict[str, dict[str, float]]]  # model -> path -> figures
    concurrency: dict[str, Any]
    latency: dict[str, dict[str, float]]
    evaluate: dict[str, float]
    mlp: dict[str, float]
    ratios: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median_rate(run: Callable[[], int], repeats: int, min_seconds: float) -> float:
    """Median over repeats of items per second; each repeat runs ``run`` until ``min_seconds`` pass."""
    run()  # warm-up: allocations, lazy initialisation, caches
    rates = []
    for _ in range(repeats):
        done, start = 0, time.perf_counter()
        while True:
            done += run()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        rates.append(done / elapsed)
    return statistics.median(rates)


# dlrm's own paths ----------------------------------------------------------------------------------


def _data(model: str, settings: BenchmarkSettings) -> Dataset:
    users, items = (SEED_USERS, SEED_ITEMS) if model == "seed" else (settings.rows, settings.rows)
    ratings = min(max(20_000, 40 * settings.batch_size), 2_000_000)
    try:
        sizes = SyntheticSpec(users=users, items=items, ratings=ratings, context=model == "default")
        return generate(MOVIELENS_SIZES if model == "movielens" else sizes)
    except ValueError as error:  # sizes this machine cannot hold
        raise DlrmUsageError(str(error)) from None


def without_context(data: Dataset) -> Dataset:
    """The data set as a model without its context columns sees it: the same ratings, users and items."""
    parts = {name: replace(data.split(name), context=None) for name in ("train", "validation", "test")}
    return replace(data, catalog=data.catalog.without_context(), **parts)


def _next_rows(count: int, batch_size: int) -> Callable[[], torch.Tensor]:
    """A function that returns the next batch of rows of a random order of ``count`` rows, round and round."""
    order = torch.randperm(count)
    position = 0

    def rows() -> torch.Tensor:
        nonlocal position
        start = position % (count - batch_size)
        position += batch_size
        return order[start : start + batch_size]

    return rows


def _dlrm_training(data: Dataset, train_config: TrainConfig, settings: BenchmarkSettings) -> Callable[[], int]:
    """One training step of dlrm as ``dlrm train`` runs it (thread count chosen the same way); returns
    the number of samples it trained on."""
    torch.manual_seed(0)
    data = training_data(data, train_config)
    config = model_config_for(data, train_config)
    model, optimizers = build_for_training(config, train_config, torch.device("cpu"))
    train, catalog = data.train, data.catalog
    next_rows = _next_rows(len(train), settings.batch_size)
    cache = None
    if train_config.heavy_bags is not None:  # the bags read from a cache, its refreshes timed with the steps
        cache = BagCache(model, catalog, train_config.heavy_bags, train_config.bag_refresh, (train.user, train.item))
        cache.start()

    def step() -> int:
        rows = next_rows()
        users, items, context = train.user[rows], train.item[rows], train.context_of(rows)
        dense, kjt, cached = training_batch(catalog, cache, users, items, rows, context=context)
        target, l2 = train.rating[rows], train_config.embedding_l2
        train_step(model, optimizers, dense, kjt, target, l2, cached=cached).item()
        if cache is not None:
            cache.step_done()
        return settings.batch_size

    governor = take_charge(settings.threads)
    if governor is None:
        return step

    def governed() -> int:
        return governor.timed(step, settings.batch_size)  # type: ignore[return-value]

    return governed


def _dlrm_train_rate(data: Dataset, train_config: TrainConfig, settings: BenchmarkSettings) -> float:
    return _median_rate(_dlrm_training(data, train_config, settings), settings.repeats, settings.min_seconds)


# Several training processes at once ------------------------------------------------------------------


def _concurrency(model: str, settings: BenchmarkSettings) -> dict[str, Any]:
    """dlrm's default training path in one process alone, then in ``settings.concurrent`` processes at
    once (each sets up, then all start timing together); the total against the one alone."""
    solo = _train_in_processes(1, model, settings)[0]
    together = _train_in_processes(settings.concurrent, model, settings)
    return {
        "processes": settings.concurrent,
        "solo_samples_per_s": solo,
        "each_samples_per_s": together,
        "total_samples_per_s": sum(together),
        "total_over_solo": sum(together) / solo,
    }


def _train_in_processes(count: int, model: str, settings: BenchmarkSettings) -> list[float]:
    payload = json.dumps({"model": model, "settings": settings.to_dict()})
    command = [sys.executable, "-m", "dlrm_cli.tools.benchmark", payload]
    with tempfile.TemporaryFile("w+") as errors:
        children = [
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True)
            for _ in range(count)
        ]
        try:
            ready = [child.stdout.readline().strip() == "ready" for child in children]  # type: ignore[union-attr]
            for child in children:
                if all(ready):
                    child.stdin.write("go\n")  # type: ignore[union-attr]
                child.stdin.close()  # type: ignore[union-attr]
            outputs = [child.stdout.read() for child in children]  # type: ignore[union-attr]
            codes = [child.wait() for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        if not all(ready) or any(codes):
            errors.seek(0)
            lines = errors.read().strip().splitlines() or ["no output"]
            raise DlrmError(f"a benchmark process failed: {lines[-1]}")
    return [json.loads(output)["samples_per_s"] for output in outputs]


def _child(payload: str) -> None:
    """A training process of ``_concurrency``: set up, say ``ready``, wait for ``go``, measure, print."""
    request = json.loads(payload)
    raw = request["settings"]
    settings = BenchmarkSettings(**{**raw, "paths": tuple(raw["paths"]), "models": tuple(raw["models"])})
    model = request["model"]
    step = _dlrm_training(_data(model, settings), MODELS[model], settings)
    step()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    rate = _median_rate(step, settings.repeats, settings.min_seconds)
    print(json.dumps({"samples_per_s": rate}), flush=True)


# The hand-written reference ------------------------------------------------------------------------


class ReferenceDLRM(nn.Module):
    """The same architecture with one nn.EmbeddingBag per table and hand-rolled interactions."""

    def __init__(self, num_dense: int, table_rows: list[int], dim: int, bottom: tuple[int, ...], top: tuple[int, ...]):
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum") for rows in table_rows)
        layers: list[nn.Module] = []
        width = num_dense
        for size in bottom:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.bottom = nn.Sequential(*layers)
        f = len(table_rows) + 1
        width = dim + f * (f - 1) // 2
        layers = []
        for size in top:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.top = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        vectors = [x] + [table(sparse[:, i : i + 1]) for i, table in enumerate(self.tables)]
        stacked = torch.stack(vectors, dim=1)
        products = torch.bmm(stacked, stacked.transpose(1, 2))
        i, j = torch.triu_indices(len(vectors), len(vectors), offset=1)
        z = torch.cat([x, products[:, i, j]], dim=1)
        return to_rating(self.top(z).squeeze(1), 0.0, 5.0)


class PerSampleRatings(TorchDataset):
    """One dict per rating, as a typical script's Dataset returns."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data.train)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        train, catalog = self.data.train, self.data.catalog
        user, item = int(train.user[index]), int(train.item[index])
        dense = [catalog.users.dense[user], catalog.items.dense[item]]
        sparse = [user, item, int(catalog.items.sparse["category"][item, 0])]
        if train.context is not None:  # the rating's own: its numeric columns, one value of each categorical one
            dense.append(train.context.dense[index])
            sparse.extend(int(rows[index, 0]) for rows in train.context.sparse.values())
        return {"dense": torch.cat(dense), "sparse": torch.tensor(sparse), "label": train.rating[index]}


def _reference_model(data: Dataset, train_config: TrainConfig) -> ReferenceDLRM:
    torch.manual_seed(0)
    config = model_config_for(data, train_config)
    rows = [t.num_embeddings for t in config.tables]
    return ReferenceDLRM(config.num_dense, rows, config.embedding_dim, config.bottom_mlp, config.top_mlp)


def _reference_train_rate(data: Dataset, train_config: TrainConfig, settings: BenchmarkSettings) -> float:
    model = _reference_model(data, train_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(PerSampleRatings(data), batch_size=settings.batch_size, shuffle=True, drop_last=True)
    batches: Iterator[dict[str, torch.Tensor]] = iter(loader)

    def step() -> int:
        nonlocal batches
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        loss = nn.functional.mse_loss(model(batch["dense"], batch["sparse"]), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return settings.batch_size

    return _median_rate(step, settings.repeats, settings.min_seconds)


def _batched_train_rate(data: Dataset, train_config: TrainConfig, settings: BenchmarkSettings) -> float:
    """The reference without its DataLoader (see the module's docstring): the same model, loss and Adam."""
    model = _reference_model(data, train_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    train, catalog = data.train, data.catalog
    category = catalog.items.sparse["category"][:, 0]
    next_rows = _next_rows(len(train), settings.batch_size)

    def step() -> int:
        rows = next_rows()
        users, items = train.user[rows], train.item[rows]
        dense = [catalog.users.dense[users], catalog.items.dense[items]]
        sparse = [users, items, category[items]]
        if train.context is not None:  # as ``PerSampleRatings``
            dense.append(train.context.dense[rows])
            sparse.extend(values[rows, 0] for values in train.context.sparse.values())
        dense, sparse = torch.cat(dense, dim=1), torch.stack(sparse, dim=1)
        loss = nn.functional.mse_loss(model(dense, sparse), train.rating[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return settings.batch_size

    return _median_rate(step, settings.repeats, settings.min_seconds)


# Inference -----------------------------------------------------------------------------------------


def _inference(data: Dataset, settings: BenchmarkSettings) -> tuple[dict[str, Any], dict[str, float]]:
    torch.manual_seed(0)
    model = RatingDLRM(model_config_for(data, TrainConfig())).eval()
    catalog, device = data.catalog, torch.device("cpu")
    users, items = len(catalog.users), len(catalog.items)
    generator = torch.Generator().manual_seed(0)
    latency: dict[str, dict[str, float]] = {}
    for batch in (1, 100, 10_000):
        calls = max(5, settings.latency_calls if batch < 10_000 else settings.latency_calls // 20)
        u = torch.randint(0, users, (batch,), generator=generator)
        i = torch.randint(0, items, (batch,), generator=generator)
        score(model, catalog, u, i, device)  # warm-up
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            score(model, catalog, u, i, device)
            times.append(time.perf_counter() - start)
        times.sort()
        latency[str(batch)] = {
            "p50_ms": 1000 * times[len(times) // 2],
            "p99_ms": 1000 * times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)],
            "calls": calls,
        }
    n = settings.eval_ratings
    u = torch.randint(0, users, (n,), generator=generator)
    i = torch.randint(0, items, (n,), generator=generator)
    start = time.perf_counter()
    score(model, catalog, u, i, device)
    seconds = time.perf_counter() - start
    return latency, {"ratings": n, "seconds": seconds, "ratings_per_s": n / seconds}


# MLP efficiency ------------------------------------------------------------------------------------


def _mlp_flops_per_sample(model: RatingDLRM) -> int:
    """Multiply-adds of the bottom and top MLPs for one training sample: forward, and twice that backward."""
    bottom_layers, top_layers = model.dense_layers()
    return 3 * sum(2 * m.in_features * m.out_features for m in (*bottom_layers, *top_layers))


def _mlp_efficiency(data: Dataset, settings: BenchmarkSettings) -> dict[str, float]:
    """Forward and backward of the bottom and top MLPs at a large batch, against a large matmul."""
    torch.manual_seed(0)
    model = RatingDLRM(model_config_for(data, TrainConfig()))
    bottom, top = model.dlrm.dense_arch, model.dlrm.over_arch
    bottom_layers = model.dense_layers()[0]
    flops_per_sample = _mlp_flops_per_sample(model)
    batch = settings.mlp_batch
    dense = torch.randn(batch, bottom_layers[0].in_features)
    over_in = torch.randn(batch, model.config.interaction_width)

    def mlp_step() -> int:
        out = bottom(dense).sum() + top(over_in).sum()
        out.backward()
        return batch

    mlp_rate = _median_rate(mlp_step, settings.repeats, settings.min_seconds) * flops_per_sample / 1e9
    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)

    def matmul() -> int:
        torch.mm(a, b)
        return 1

    matmul_rate = _median_rate(matmul, settings.repeats, settings.min_seconds) * 2 * size**3 / 1e9
    return {
        "mlp_gflops": mlp_rate,
        "matmul_gflops": matmul_rate,
        "mlp_fraction_of_matmul": mlp_rate / matmul_rate,
        "mlp_batch": batch,
        "mlp_mflop_per_sample": flops_per_sample / 1e6,
    }


def _check(settings: BenchmarkSettings) -> None:
    """Refuse paths and models the benchmark does not know, and a concurrency figure of one process."""
    for given, allowed, option in (
        (settings.paths, BENCHMARK_PATHS, "--paths"),
        (settings.models, BENCHMARK_MODELS, "--model"),
    ):
        unknown = [name for name in given if name not in allowed]
        if unknown:
            raise DlrmUsageError(f"{option} takes {', '.join(allowed)}; got {unknown[0]!r}")
    if settings.concurrent == 1 or settings.concurrent < 0:
        raise DlrmUsageError(f"--concurrent takes 0 (skip) or 2 or more processes; got {settings.concurrent}")


def _train_rates(
    model: str, data: Dataset, settings: BenchmarkSettings, threads: int, progress: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    """Training samples/s of ``model`` on each path; beside dlrm's fused path, the same model without the
    bags and with them cached (``movielens``) and without the context columns (``default``), to show what they
    cost."""
    rates: dict[str, dict[str, float]] = {}
    for path in settings.paths:
        if model == "movielens" and path in REFERENCES:
            continue  # the hand-written references have no bags to compare with
        progress(f"{model} model: training throughput, {path}")
        torch.set_num_threads(threads)
        if path == "reference":
            rate = _reference_train_rate(data, MODELS[model], settings)
        elif path == "batched":
            rate = _batched_train_rate(data, MODELS[model], settings)
        else:
            embeddings = "fused" if path == "fused" else "plain"
            rate = _dlrm_train_rate(data, replace(MODELS[model], embeddings=embeddings), settings)
        rates[path] = {"train_samples_per_s": rate}
    if "fused" not in settings.paths:
        return rates
    if model == "movielens":  # what the bags cost
        progress(f"{model} model: training throughput, fused without bags")
        torch.set_num_threads(threads)
        rate = _dlrm_train_rate(data, replace(MODELS[model], bags=False), settings)
        rates["fused_without_bags"] = {"train_samples_per_s": rate}
        progress(f"{model} model: training throughput, fused with the bags cached (--heavy-bags 0)")
        torch.set_num_threads(threads)
        rate = _dlrm_train_rate(data, replace(MODELS[model], heavy_bags=0, bag_refresh=10), settings)
        rates["fused_cached_bags"] = {"train_samples_per_s": rate}
    if data.catalog.context is not None:  # what the context columns cost
        progress(f"{model} model: training throughput, fused without the context columns")
        torch.set_num_threads(threads)
        rate = _dlrm_train_rate(without_context(data), MODELS[model], settings)
        rates["fused_without_context"] = {"train_samples_per_s": rate}
    return rates


def run_benchmark(settings: BenchmarkSettings, progress: Callable[[str], None] = lambda _: None) -> BenchmarkReport:
    """Measure every figure (training processes for the concurrency figure aside) in this process;
    ``progress`` hears what is being measured."""
    _check(settings)
    # Measurements outside dlrm's training loop use every CPU (or the count the user fixed).
    threads = chosen_threads(settings.threads) or available_cpus()
    train: dict[str, dict[str, dict[str, float]]] = {}
    datasets: dict[str, Dataset] = {}
    for model in settings.models:
        data = datasets[model] = _data(model, settings)
        users, items = len(data.catalog.users), len(data.catalog.items)
        progress(f"{model} model: synthetic data, {users:,} users and {items:,} items")
        train[model] = _train_rates(model, data, settings, threads, progress)
    concurrency: dict[str, Any] = {}
    if settings.concurrent:
        model = settings.models[0]
        progress(f"{model} model: {settings.concurrent} training processes at once, and one alone")
        concurrency = {"model": model, **_concurrency(model, settings)}
    torch.set_num_threads(threads)
    data = datasets.get("default") or _data("default", settings)
    progress("inference latency and evaluate throughput")
    keep_freed_memory()  # as every command that loads a checkpoint to score does (dlrm_cli.runtime.memory)
    latency, evaluate = _inference(data, settings)
    progress("MLP efficiency against a large matmul")
    mlp = _mlp_efficiency(data, settings)
    ratios: dict[str, float] = {"mlp_over_matmul": mlp["mlp_fraction_of_matmul"]}
    for model, rates in train.items():
        fused = rates.get("fused", {}).get("train_samples_per_s")
        if not fused:
            continue
        for path in rates:
            if path != "fused":
                ratios[f"{model}_fused_over_{path}"] = fused / rates[path]["train_samples_per_s"]
        trained = training_data(datasets[model], MODELS[model])
        flops = _mlp_flops_per_sample(RatingDLRM(model_config_for(trained, MODELS[model])))
        ceiling = mlp["matmul_gflops"] * 1e9 / flops  # samples/s if the MLPs ran at the matmul rate
        rates["fused"]["ceiling_samples_per_s"] = ceiling
        ratios[f"{model}_fused_share_of_ceiling"] = fused / ceiling
    if concurrency:
        ratios["concurrent_over_solo"] = concurrency["total_over_solo"]
    return BenchmarkReport(
        settings={
            **settings.to_dict(),
            "threads": threads,
            "tables": {
                model: [{"feature": name, "rows": rows} for name, rows in data.catalog.sparse_features]
                for model, data in datasets.items()
            },
        },
        train=train,
        concurrency=concurrency,
        latency=latency,
        evaluate=evaluate,
        mlp=mlp,
        ratios=ratios,
    )


if __name__ == "__main__":  # a training process of the concurrency figure
    _child(sys.argv[1])
